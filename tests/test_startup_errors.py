"""A setting a function cannot use is a clear start-up error that names the variable
(llmfn.runtime.build_runtime -> MisconfiguredRuntime): a MongoDB URI that does not parse, an S3
endpoint that is not a URL, an unresolved func.yaml template. Each function runs as its
container does (gunicorn, scripts/procs.py): readiness and liveness answer 503 naming the
variable, so does the log, and every route of the function's OpenAPI document answers, none
with a 500. The template case under the real `func run` is in tests/test_knative_func_cli.py.
"""
from __future__ import annotations

import re

import pytest
import requests

from tests.support.route_walk import assert_every_route_answers
from tests.support.stack import Functions

LISTEN_S = 120.0

# case -> (function, environment, the variable named, a secret that must not be shown)
CASES = {
    # pymongo: "Username and password must be escaped according to RFC 3986"
    "audit-mongodb-uri": ("audit", {"MONGODB_URI": "mongodb://llmfn:pa:ss@127.0.0.1:27017/"},
                          "MONGODB_URI", "pa:ss"),
    "generate-s3-endpoint": ("generate", {"S3_ENDPOINT_URL": "minio.minio.svc:9000",
                                          "MODEL_URI": "s3://models/m.gguf"},
                             "S3_ENDPOINT_URL", None),
    "embed-env-template": ("embed", {"AWS_ACCESS_KEY_ID": "{{ env:LLMFN_S3_KEY }}",
                                     "MODEL_URI": "s3://models/m.gguf"},
                           "AWS_ACCESS_KEY_ID", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_setting_is_a_clear_startup_error(case, tmp_path):
    function, env, variable, secret = CASES[case]
    with Functions(tmp_path) as fns:
        proc = fns.start(function, env)
        proc.wait_listening(LISTEN_S)
        ready = requests.get(proc.url + "/health/readiness", timeout=10)
        assert ready.status_code == 503 and variable in ready.text, ready.text
        assert "invalid settings" in ready.text
        live = requests.get(proc.url + "/health/liveness", timeout=10)
        assert live.status_code == 503 and variable in live.text, live.text
        got = assert_every_route_answers(proc.url, function, variable)
        assert got["GET /metrics"] == 200
        assert proc.running, "the process stays up to say why"
    log = proc.log_tail(20000)
    assert re.search(rf"cannot start: invalid settings: .*{variable}", log), log
    if secret:  # a secret's value (a password in a URI) is named, never shown
        assert secret not in ready.text + live.text + log

