"""Property-based run of the API against its own OpenAPI document: no 5xx, no response outside the schema.

schemathesis generates requests for every operation from /api/v1/openapi.json
and checks each response: no server error, a documented status code and
content type, a body that matches the documented schema, and invalid input
refused with a 4xx.  Each operation gets three runs: valid requests, invalid
requests, and valid requests aimed at objects that exist (interface wg0,
client alice), so the fuzzing reaches the service layer and not only 404s.
"""

import secrets

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from puqvpn.services import clients, interfaces, tokens

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
EXAMPLES = 8
# Generating an RSA CA takes seconds: fewer examples there keep the run short.
SLOW = {("POST", "/api/v1/ikev2/ca"): 3, ("POST", "/api/v1/ikev2/server-cert"): 4}


@pytest.fixture
def token(db):
    return tokens.create(db, "fuzz", "admin")[1]


def ensure_objects(db):
    """The interface and client the targeted run aims at, recreated if a DELETE removed them."""
    if interfaces.get(db, "wg0") is None:
        interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                               "endpoint": "vpn.example.com"})
    if clients.get(db, "alice") is None:
        # A fresh username: a PATCH may have renamed alice but kept hers.
        clients.create(db, {"interface": "wg0", "name": "alice", "username": "u" + secrets.token_hex(6)})


def run_operation(operation, strategy, headers, before=None):
    @given(case=strategy)
    @settings(max_examples=SLOW.get((operation.method.upper(), operation.path), EXAMPLES), deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        if before:
            before()
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except Exception as error:
        raise AssertionError(f"{operation.method.upper()} {operation.path}: {error}") from error


def test_the_api_keeps_to_its_openapi_document(app, db, token):
    ensure_objects(db)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    # One hypothesis run per operation and mode, so a failure names the operation.  (schemathesis'
    # pytest plugin does the same, but its lazy-fixture loader does not work with this pytest.)
    for operation in operations:
        run_operation(operation, operation.as_strategy(GenerationMode.POSITIVE), headers)
        run_operation(operation, operation.as_strategy(GenerationMode.NEGATIVE), headers)
        names = {p.name for p in operation.path_parameters}
        targets = {k: v for k, v in (("name", "alice"), ("interface_name", "wg0")) if k in names}
        if targets:
            run_operation(operation, operation.as_strategy(GenerationMode.POSITIVE, path_parameters=targets),
                          headers, before=lambda: ensure_objects(db))
