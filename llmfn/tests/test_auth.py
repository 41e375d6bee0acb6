"""Bearer auth: keys from API_KEYS and a key file, constant-time check, OpenAI-shaped 401."""
import pytest

from llmfn.auth import BearerAuth, load_keys
from llmfn.errors import Unauthorized
from llmfn.settings import ServerSettings, SettingsError, build


def test_keys_from_env_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nfile-key\n\n")
    keys = load_keys(build(ServerSettings, {"API_KEYS": "a, b,", "API_KEYS_FILE": str(f)}))
    assert keys == (b"a", b"b", b"file-key")


def test_missing_key_file_names_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="API_KEYS_FILE"):
        load_keys(build(ServerSettings, {"API_KEYS_FILE": str(tmp_path / "nope")}))


def test_disabled_without_keys():
    auth = BearerAuth(())
    assert not auth.enabled
    auth.check(None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic a", "Bearer wrong",
                                    "Bearer a-but-longer"])
def test_rejects(header):
    with pytest.raises(Unauthorized) as err:
        BearerAuth((b"a", b"b")).check(header)
    assert err.value.status == 401
    assert err.value.body()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("header", ["Bearer a", "bearer b", "Bearer  b "])
def test_accepts(header):
    BearerAuth((b"a", b"b")).check(header)
