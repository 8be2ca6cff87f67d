"""Bounded-time fuzz of the HTTP API: whatever arrives, no 5xx, and errors are {code, message}."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_config, serving
from seqstate.serve import create_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
xs = (
    st.lists(numbers, max_size=5)
    | st.lists(st.lists(numbers, max_size=5), max_size=4)
    | json_values
)
ids = st.sampled_from(["a", "b", "c"]) | st.text(max_size=140)
step_bodies = st.fixed_dictionaries(
    {"seq": st.integers(-2, 5) | json_values, "x": xs},
    optional={"start": st.booleans() | json_values, "extra": json_values},
)
batch_bodies = (
    st.fixed_dictionaries(
        {
            "steps": st.lists(
                st.fixed_dictionaries({"id": ids}, optional={"seq": st.integers(-1, 4), "x": xs})
                | json_values,
                max_size=4,
            )
        }
    )
    | json_values
)


class Client:
    """Synchronous calls into an in-process app whose lifespan runs on one private loop."""

    def __init__(self, app) -> None:
        self.loop = asyncio.new_event_loop()
        self.context = serving(app)
        self.client = self.loop.run_until_complete(self.context.__aenter__())

    def request(self, method: str, url: str, **kwargs):
        # ASGITransport re-raises any exception of the app: a 500 fails the test loudly
        return self.loop.run_until_complete(self.client.request(method, url, **kwargs))

    def post(self, url: str, body) -> object:
        # json.dumps writes NaN/Infinity tokens, which Python's json.loads on the server accepts
        content = json.dumps(body).encode()
        return self.request(
            "POST", url, content=content, headers={"Content-Type": "application/json"}
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.context.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def client(run_dir):
    app = create_app(make_config(run_dir, max_body_bytes=4096, max_steps_per_request=3, ttl_s=5.0))
    client = Client(app)
    yield client
    client.close()


def check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["code"], str) and isinstance(body["message"], str)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=ids, body=step_bodies | json_values)
def test_step_endpoint(client, stream, body):
    check(client.post(f"/v1/streams/{quote(stream, safe='')}/steps", body))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=batch_bodies)
def test_batch_endpoint(client, body):
    response = client.post("/v1/steps", body)
    check(response)
    if response.status_code == 200:
        for item in response.json()["results"]:
            assert item["status"] < 500
            if item["status"] != 200:
                assert item["error"]["code"] and item["error"]["message"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    path=st.sampled_from(
        ["/v1/streams/{}", "/v1/streams/{}/steps", "/v1/steps", "/healthz", "/metrics", "/{}"]
    ),
    stream=ids,
    raw=st.binary(max_size=64),
    token=st.sampled_from([None, "Bearer test-token", "Bearer x", "bearer test-token", "Basic a"]),
)
def test_any_method_path_and_bytes(client, method, path, stream, raw, token):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    url = path.format(quote(stream, safe=""))
    check(client.request(method, url, content=raw, headers=headers))
