"""schemathesis against the API's own OpenAPI schema, in process: bounded examples per operation;
no answer is a 5xx and every answer matches the schema (its status code, content type and body)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from webapp.wsgi import application

# A body past DATA_UPLOAD_MAX_MEMORY_SIZE is rejected with 413 before it is read: a rejection too, which
# schemathesis's default list of statuses for invalid data leaves out (it generated a 15 MB body once).
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}})
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, config=config)


@pytest.fixture
def keep_connection():
    """The app is called in process, as Django's test client calls it: a request's end must not
    close the test's database connection (its transaction holds the test's data)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def admin_token(db, keep_connection) -> str:
    from tests.factories import make_project, make_serving_version, make_task, make_user
    from webapp.accounts.services import token_for_user

    admin = make_user("admin", username="fuzz-admin")
    make_serving_version()
    project = make_project(name="Fuzzed", members=[admin])
    make_task(project=project)
    return token_for_user(user=admin)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, admin_token):
    # positive_data_acceptance is left out: a schema cannot say that a project id must exist
    case.call_and_validate(
        headers={"Authorization": f"Token {admin_token}"}, excluded_checks=[positive_data_acceptance]
    )
