"""What the agent-client test modules share (tests/test_anthropic_e2e.py, test_js_clients.py,
test_responses_e2e.py): the API key of the session's generate (conftest.py
``agents_generate``). Here, not in conftest.py: a test module cannot import ``conftest`` by
name when llmfn/tests and tests run in one pytest (two modules of that name)."""

AGENTS_KEY = "agents-test-key"
"""The API key (``API_KEYS``) of the ``agents_generate`` fixture's generate."""
