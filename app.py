"""Run the panel: python app.py

Serves with waitress on HOST:PORT (default 127.0.0.1:8080), over HTTPS when
TLS_CERT and TLS_KEY are set.  Settings: see puqvpn/settings.py and the README.
"""

import logging
import sys

from puqvpn import create_app
from puqvpn.server import serve


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app = create_app()
    serve(app)


if __name__ == "__main__":
    main()
