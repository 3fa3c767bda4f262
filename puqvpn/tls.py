"""HTTPS for the panel: a small TLS front in front of waitress, stdlib only.

waitress speaks plain HTTP, so it listens on an ephemeral loopback port and
trusts only 127.0.0.1 as a proxy.  The front listens on HOST:PORT, ends TLS,
reads each request head, drops every client-supplied ``X-Forwarded-*`` and
``Forwarded`` header, adds ``X-Forwarded-For`` (the real peer) and
``X-Forwarded-Proto: https`` and passes the request on.  waitress turns those
into ``REMOTE_ADDR`` and ``wsgi.url_scheme``, so ``request.remote_addr`` is the
real client and ``request.is_secure`` is true.

Responses are not parsed: bytes from waitress are copied back to the client
by a second thread, in order, which keeps keep-alive and pipelining correct
for free.  Request bodies must carry a Content-Length (the panel's forms and
API never send chunked bodies); chunked uploads get 411.
"""

import logging
import queue
import select
import socket
import ssl
import threading
import time

from waitress.server import create_server

log = logging.getLogger("puqvpn.tls")

MAX_HEAD = 64 * 1024          # request line + headers
MAX_HEADERS = 100
HANDSHAKE_TIMEOUT = 10        # seconds for the TLS handshake
IDLE_TIMEOUT = 60             # seconds between requests on a kept-alive connection
IO_TIMEOUT = 60               # seconds a read or write may stall mid-request
UPSTREAM_TIMEOUT = 600        # seconds the panel may take to answer (a restore, an apply)
MAX_CONNECTIONS = 256
CHUNK = 64 * 1024
DRAIN_SECONDS = 2             # after a refusal, how long to swallow the rest of the request
DRAIN_BYTES = 1024 * 1024

DROPPED = ("x-forwarded-", "forwarded", "x-real-ip")
TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def ssl_context(cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert, key)
    return context


def _error_response(status, message):
    body = (message + "\n").encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def parse_head(head, peer_ip):
    """The request head to forward, and the body length. Raises BadRequest.

    ``head`` is the raw bytes up to and including the blank line.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes any byte; kept for clarity
        raise BadRequest("400 Bad Request", "Malformed request.") from None
    lines = text.split("\r\n")
    request_line, header_lines = lines[0], [line for line in lines[1:] if line]
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0] or \
            not set(parts[0]) <= TOKEN_CHARS or not parts[1]:
        raise BadRequest("400 Bad Request", "Malformed request line.")
    if len(header_lines) > MAX_HEADERS:
        raise BadRequest("431 Request Header Fields Too Large", "Too many headers.")
    kept, length = [], None
    for line in header_lines:
        if line[0] in " \t":
            raise BadRequest("400 Bad Request", "Folded header lines are not accepted.")
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= TOKEN_CHARS:
            raise BadRequest("400 Bad Request", "Malformed header line.")
        if any(ch in value for ch in "\r\n\x00"):
            raise BadRequest("400 Bad Request", "Malformed header value.")
        lower = name.lower()
        if lower.startswith(DROPPED):
            continue            # only the front says where a request came from
        if lower == "transfer-encoding":
            raise BadRequest("411 Length Required", "Send the body with a Content-Length.")
        if lower == "content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise BadRequest("400 Bad Request", "Invalid Content-Length.")
            length = int(value)
        kept.append(f"{name}:{value}")
    kept.append(f"X-Forwarded-For: {peer_ip}")
    kept.append("X-Forwarded-Proto: https")
    forwarded = "\r\n".join([request_line, *kept]) + "\r\n\r\n"
    return forwarded.encode("latin-1"), length or 0


class _Connection:
    """One client connection.

    This thread reads requests and forwards them; a pump thread relays the
    responses in order.  Each response is framed (Content-Length, chunked or
    close) so that when the client stops sending, or sends something refused,
    every response already owed is delivered before the connection closes.
    One OpenSSL object must not be used by two threads at once, so the TLS
    socket is non-blocking and every read or write on it holds ``lock``;
    waiting happens in select() outside the lock.
    """

    def __init__(self, front, raw, peer):
        self.front = front
        self.raw = raw
        self.peer_ip = peer[0]
        if self.peer_ip.startswith("::ffff:"):
            self.peer_ip = self.peer_ip[7:]
        self.tls = None
        self.upstream = None
        self.buffer = b""
        self.lock = threading.Lock()
        self.pending = queue.Queue()    # request methods owed a response; None ends
        self.refusal = None
        self.broken = threading.Event()

    def run(self):
        try:
            self._serve()
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as error:
            log.debug("connection from %s ended: %s", self.peer_ip, error)
        finally:
            self._close()
            self.front.slots.release()

    def _serve(self):
        self.raw.settimeout(HANDSHAKE_TIMEOUT)
        first = self.raw.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first != b"\x16":  # not a TLS ClientHello: someone typed http://
            self.raw.sendall(_error_response("400 Bad Request", "This panel speaks HTTPS only."))
            return
        self.tls = self.front.context.wrap_socket(self.raw, server_side=True)
        self.tls.setblocking(False)
        self.upstream = socket.create_connection(("127.0.0.1", self.front.upstream_port),
                                                 timeout=UPSTREAM_TIMEOUT)
        pump = threading.Thread(target=self._pump, name="tls-pump", daemon=True)
        pump.start()
        try:
            while self._forward_one():
                pass
        except BadRequest as error:
            self.refusal = _error_response(error.status, error.message)
        finally:
            self.pending.put(None)
            pump.join()
            if self.refusal:
                self._drain()

    def _drain(self):
        """After refusing, read what the client is still sending before closing.

        Closing with unread data makes the kernel send a reset, and the client
        may then never see the refusal.
        """
        try:
            socket.socket.shutdown(self.tls, socket.SHUT_WR)
        except OSError:
            return
        deadline, left = time.monotonic() + DRAIN_SECONDS, DRAIN_BYTES
        while left > 0 and time.monotonic() < deadline:
            try:
                with self.lock:
                    data = self.tls.recv(CHUNK)
                if not data:
                    return
                left -= len(data)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                select.select([self.tls], [], [], max(0.0, deadline - time.monotonic()))
            except (OSError, ssl.SSLError):
                return

    # --- TLS I/O, one OpenSSL call at a time ---

    def _wait(self, readable, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.broken.is_set():
            raise TimeoutError("connection timed out")
        if readable:
            select.select([self.tls], [], [], min(remaining, 1.0))
        else:
            select.select([], [self.tls], [], min(remaining, 1.0))

    def _recv(self, size, timeout):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                try:
                    return self.tls.recv(size)
                except ssl.SSLWantReadError:
                    want_read = True
                except ssl.SSLWantWriteError:
                    want_read = False
                except ssl.SSLZeroReturnError:
                    return b""
            self._wait(want_read, deadline)

    def _send(self, data):
        view = memoryview(data)
        deadline = time.monotonic() + IO_TIMEOUT
        while view:
            with self.lock:
                try:
                    sent = self.tls.send(view[:CHUNK])
                except ssl.SSLWantWriteError:
                    sent, want_read = 0, False
                except ssl.SSLWantReadError:
                    sent, want_read = 0, True
            if sent:
                view = view[sent:]
                deadline = time.monotonic() + IO_TIMEOUT
            else:
                self._wait(want_read, deadline)

    # --- requests: client -> waitress ---

    def _read_head(self):
        timeout = IDLE_TIMEOUT
        while True:
            # A request never starts with a blank line; skip any between pipelined requests.
            self.buffer = self.buffer.lstrip(b"\r\n")
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, self.buffer = self.buffer[:end + 4], self.buffer[end + 4:]
                return head
            if len(self.buffer) > MAX_HEAD:
                raise BadRequest("431 Request Header Fields Too Large", "The request head is too large.")
            data = self._recv(CHUNK, timeout)
            if not data:
                return None
            self.buffer += data
            timeout = IO_TIMEOUT

    def _forward_one(self):
        head = self._read_head()
        if head is None:
            return False
        forwarded, length = parse_head(head, self.peer_ip)
        method = head.split(b" ", 1)[0].decode("latin-1")
        self.pending.put(method)
        self.upstream.sendall(forwarded)
        while length:
            if not self.buffer:
                self.buffer = self._recv(min(CHUNK, length), IO_TIMEOUT)
                if not self.buffer:
                    return False
            piece, self.buffer = self.buffer[:length], self.buffer[length:]
            self.upstream.sendall(piece)
            length -= len(piece)
        return True

    # --- responses: waitress -> client ---

    def _pump(self):
        reader = self.upstream.makefile("rb")
        try:
            while True:
                method = self.pending.get()
                if method is None:
                    if self.refusal:
                        self._send(self.refusal)
                    break
                if not self._relay_response(reader, method):
                    break
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as error:
            log.debug("response to %s cut short: %s", self.peer_ip, error)
        finally:
            reader.close()
            # Nothing more will be answered: wake the reader so the connection closes.
            self.broken.set()

    def _relay_response(self, reader, method):
        """Copy one response (after any 1xx); False when the connection must close."""
        while True:
            head = _read_response_head(reader)
            if head is None:
                return False
            status_line, headers = _parse_response_head(head)
            code = int(status_line.split(" ", 2)[1])
            if 100 <= code < 200 and code != 101:
                self._send(head)
                continue
            break
        closing = "close" in headers.get("connection", "").lower() or status_line.startswith("HTTP/1.0")
        if method == "HEAD" or code in (204, 304):
            self._send(head)
            return not closing
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) <= CHUNK:
            # A small answer goes out in one write (one TLS record where it fits).
            body = reader.read(int(length))
            if len(body) != int(length):
                raise OSError("upstream closed mid-response")
            self._send(head + body)
            return not closing
        self._send(head)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = reader.readline(1024)
                if not size_line.endswith(b"\n"):
                    return False
                self._send(size_line)
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:     # trailers, then the blank line
                        line = reader.readline(8192)
                        self._send(line)
                        if line in (b"\r\n", b"\n", b""):
                            return not closing and line != b""
                self._copy(reader, size + 2)
        elif "content-length" in headers:
            self._copy(reader, int(headers["content-length"]))
            return not closing
        while True:                 # delimited by close
            data = reader.read1(CHUNK)
            if not data:
                return False
            self._send(data)

    def _copy(self, reader, length):
        while length:
            data = reader.read1(min(CHUNK, length))
            if not data:
                raise OSError("upstream closed mid-response")
            self._send(data)
            length -= len(data)

    def _close(self):
        for sock in (self.upstream, self.tls, self.raw):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def _read_response_head(reader):
    lines = []
    size = 0
    while True:
        line = reader.readline(MAX_HEAD)
        if not line:
            return None
        lines.append(line)
        size += len(line)
        if line in (b"\r\n", b"\n") or size > 4 * MAX_HEAD:
            return b"".join(lines)


def _parse_response_head(head):
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class TLSFront:
    """waitress on loopback plus the TLS listener; ``close()`` stops both."""

    def __init__(self, app, host, port, cert, key, threads=8):
        self.context = ssl_context(cert, key)
        self.waitress = create_server(
            app, host="127.0.0.1", port=0, threads=threads, ident="puqvpn",
            trusted_proxy="127.0.0.1", trusted_proxy_count=1,
            trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
            clear_untrusted_proxy_headers=True,
            channel_timeout=IDLE_TIMEOUT + 60)
        self.upstream_port = self.waitress.effective_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.listener.bind((host, int(port)))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.closed = threading.Event()
        self.threads = [threading.Thread(target=self._run_waitress, name="waitress", daemon=True),
                        threading.Thread(target=self._accept, name="tls-accept", daemon=True)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def _accept(self):
        while not self.closed.is_set():
            try:
                raw, peer = self.listener.accept()
            except OSError:
                if self.closed.is_set():
                    return
                time.sleep(0.05)   # e.g. out of file descriptors: back off, keep serving
                continue
            if not self.slots.acquire(blocking=False):
                raw.close()        # too many connections: refuse rather than queue without bound
                continue
            connection = _Connection(self, raw, peer)
            threading.Thread(target=connection.run, name="tls-conn", daemon=True).start()

    def _run_waitress(self):
        try:
            self.waitress.run()
        except OSError:
            if not self.closed.is_set():
                raise

    def close(self):
        self.closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        # Let requests in progress finish, then close waitress from its own loop
        # thread: its map empties and run() returns.
        self.waitress.task_dispatcher.shutdown()

        def stop():
            for channel in list(self.waitress._map.values()):
                if channel is not self.waitress.trigger:
                    channel.close()
            self.waitress.trigger.close()
        self.waitress.trigger.pull_trigger(stop)
        self.threads[0].join(5)


def start_tls(app, host, port, cert, key, threads=8):
    return TLSFront(app, host, port, cert, key, threads).start()


def serve_tls(app, host, port, cert, key, threads=8):
    """Serve the app over HTTPS on host:port until interrupted."""
    front = start_tls(app, host, port, cert, key, threads)
    log.info("puqvpn listening on https://%s:%s", host, front.port)
    try:
        while not front.closed.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        front.close()
