"""Config validation: every mistake is one clear line naming file and key, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trapline.app.settings import load_settings
from trapline.core.config import ConfigError, Secret, Section, read_secret_file

GOOD = """
[agent]
host = "trapline-agent"
[spool]
path = "{dir}/spool.db"
[collectors.demo]
type = "synthetic"
host = "demo"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trapline.toml"
    path.write_text(text.replace("{dir}", str(tmp_path)))
    return path


def test_good_config_builds_collectors(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    assert [c.name for c in settings.collectors] == ["demo"]
    assert settings.agent.host == "trapline-agent"
    assert settings.spool.path == tmp_path / "spool.db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace('host = "demo"', ""), "[collectors.demo].host: missing, expected a string"),
        (GOOD.replace('host = "demo"', "host = 5"), "[collectors.demo].host: expected a string, got int 5"),
        (GOOD + "\n[nonsense]\nx = 1\n", "nonsense: unknown section"),
        (GOOD.replace('type = "synthetic"', 'type = "warp"'), "unknown collector type"),
        (GOOD + "\n[zabbix]\nservers = 5\n", "[zabbix].servers: expected a list of strings"),
        (GOOD.replace("[agent]", "[agent]\nself_intervall = 3"), "[agent].self_intervall: unknown key"),
        (GOOD.replace("[spool]", "[spool]\nsync = 'sometimes'"), "[spool].sync: expected one of full"),
        (GOOD.replace("[spool]", "[spool]\nmax_readings = true"), "[spool].max_readings: expected an int"),
        ("[agent\n", "not valid TOML"),
        (GOOD + "\n[mqtt]\nhost = 'broker'\nqos = 3\n", "[mqtt].qos"),
    ],
)
def test_each_mistake_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(str(path))
    assert expected in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_secret_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others") as err:
        read_secret_file(secret)
    assert "s3cr3t" not in str(err.value)
    secret.chmod(0o600)
    value = read_secret_file(secret)
    assert value.reveal() == "s3cr3t-value"
    assert "s3cr3t" not in repr(value) and "s3cr3t" not in str(value)


def test_tls_files_need_a_private_key_and_existing_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_text("certificate")
    key.write_text("key")
    key.chmod(0o640)

    def section(**keys: str) -> Section:
        return Section(tmp_path / "x.toml", "mqtt", dict(keys))

    with pytest.raises(ConfigError, match="private key file is readable by group or others"):
        section(tls_cert_file=str(cert), tls_key_file=str(key)).tls_files()
    key.chmod(0o600)
    files = section(tls_cert_file=str(cert), tls_key_file=str(key)).tls_files()
    assert (files.cert_file, files.key_file, files.ca_file, files.any) == (cert, key, None, True)
    with pytest.raises(ConfigError, match=r"\[mqtt\].*tls_key_file.*without tls_cert_file"):
        section(tls_key_file=str(key)).tls_files()
    with pytest.raises(ConfigError, match=r"tls_ca_file.*no such file"):
        section(tls_ca_file=str(tmp_path / "absent.pem")).tls_files()
    assert not section().tls_files().any


def test_secret_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAPLINE_TEST_TOKEN", "abc")
    sec = Section(tmp_path / "x.toml", "mist", {"token_env": "TRAPLINE_TEST_TOKEN"})
    secret = sec.secret("token")
    assert isinstance(secret, Secret) and secret.reveal() == "abc"
    sec = Section(tmp_path / "x.toml", "mist", {"token_env": "TRAPLINE_UNSET_VARIABLE"})
    with pytest.raises(ConfigError, match="TRAPLINE_UNSET_VARIABLE is not set"):
        sec.secret("token")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trapline", *args], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.parametrize(
    "mistake",
    [
        lambda t: t.replace('host = "demo"', ""),  # missing key
        lambda t: t.replace('host = "demo"', "host = []"),  # wrong type
        lambda t: t + "\n[bogus]\n",  # unknown section
    ],
    ids=["missing-key", "wrong-type", "unknown-section"],
)
def test_cli_exits_2_with_one_line(tmp_path: Path, mistake: object) -> None:
    assert callable(mistake)
    path = write(tmp_path, mistake(GOOD))
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trapline: config error: " + str(path))


def test_cli_refuses_world_readable_secret(tmp_path: Path) -> None:
    secret = tmp_path / "api.token"
    secret.write_text("very-secret-token")
    secret.chmod(0o644)
    text = GOOD + f'\n[zabbix]\nservers = ["127.0.0.1:10051"]\napi_url = "http://127.0.0.1:1/"\n' \
                  f'api_token_file = "{secret}"\n'
    result = run_cli("run", "-c", str(write(tmp_path, text)))
    assert result.returncode == 2
    assert "readable by group or others" in result.stderr
    assert "very-secret-token" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


# Each value below was accepted, or crashed the CLI with a traceback, before the range checks
# (issue 17, "Config validation"); the expected text names the key and the range.
ZABBIX = '\n[zabbix]\nservers = ["127.0.0.1:10051"]\n'
MQTT = "\n[mqtt]\nhost = 'broker'\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("[agent]", "[agent]\nself_interval = nan"), "[agent].self_interval: expected a finite"),
        (GOOD.replace("[agent]", "[agent]\nshutdown_timeout = inf"), "shutdown_timeout: expected a finite"),
        (GOOD.replace("[spool]", "[spool]\nbatch = 9223372036854775808"), "[spool].batch: expected an int"),
        (GOOD + ZABBIX.replace("10051", "99999"), "[zabbix].servers[0]: bad port"),
        (GOOD + ZABBIX.replace("10051", "10051:1"), "[zabbix].servers[0]: '127.0.0.1:10051:1' is neither"),
        (GOOD + ZABBIX + 'api_url = "not a url"\napi_token_env = "X"\n', "[zabbix].api_url: expected a http"),
        (GOOD + ZABBIX + 'api_url = "http://:80/"\napi_token_env = "X"\n', "[zabbix].api_url: ''"),
        (GOOD + MQTT + "port = 65536\n", "[mqtt].port: expected an integer <= 65535"),
        (GOOD + MQTT + "keepalive = 70000\n", "[mqtt].keepalive: expected an integer <= 65535"),
        (GOOD + MQTT + "session_expiry = 4294967296\n", "session_expiry: expected an integer <= 4294967295"),
        (GOOD + "\n[mqtt]\nhost = 'two words'\n", "[mqtt].host: 'two words' is not a host name"),
        (GOOD + "\n[prometheus]\nlisten = '127.0.0.1'\n", "[prometheus].listen: expected host:port"),
        (GOOD + "\n[prometheus]\nlisten = 'no-such-host.invalid:97'\n", "[prometheus].listen: cannot"),
        (GOOD.replace("{dir}/spool.db", "{dir}/spo\\u0000ol.db"), "[spool].path: expected a file path"),
        (GOOD + '\n["new\\nline"]\n', '"new\\nline": unknown section'),
        ("", "the file is empty"),
        ("x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("x = " + "9" * 5000, "not valid TOML (Exceeds the limit"),
        (GOOD.replace("[agent]", "[agent]\nself_interval = 1" + "0" * 400), "finite number, got an"),
    ],
)
def test_values_out_of_range(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_non_utf8_bytes_name_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "trapline.toml"
    path.write_bytes(b"[agent]\nhost = \"\xff\"\n")
    with pytest.raises(ConfigError, match=r"trapline.toml: not UTF-8 \(byte 16\)"):
        load_settings(path)


def test_missing_secret_file_names_key_and_file(tmp_path: Path) -> None:
    absent = tmp_path / "mqtt.password"
    path = write(tmp_path, GOOD + MQTT + f"username = 'van'\npassword_file = '{absent}'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: [mqtt].password_file: {absent}: cannot read secret file")


def test_good_addresses_still_parse(tmp_path: Path) -> None:
    sec = Section(tmp_path / "x.toml", "t", {
        "a": "[fe80::1%eth0]:10051", "b": "zbx_1.example.", "c": "2001:db8::5", "u": "https://[::1]:8443/x",
    })
    assert sec.host_port("a", 1) == ("fe80::1%eth0", 10051)
    assert sec.host_port("b", 10051) == ("zbx_1.example.", 10051)
    assert sec.host_port("c", 10051) == ("2001:db8::5", 10051)
    assert sec.url("u", ("https",)) == "https://[::1]:8443/x"


def test_cli_run_and_check_print_one_line_for_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "trapline.toml"
    path.write_bytes(b"\x80\x81")
    for command in ("run", "check"):
        result = run_cli(command, "-c", str(path))
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"trapline: config error: {path}: not UTF-8 (byte 0)"]


def test_check_exits_2_naming_the_key_of_a_host_that_does_not_resolve(tmp_path: Path) -> None:
    unknown = "no-such-host.invalid"  # .invalid never resolves (RFC 2606)
    cases = {"[mqtt].host": f"[mqtt]\nhost = '{unknown}'",
             "[zabbix].servers[0]": f"[zabbix]\nservers = ['127.0.0.1;{unknown}']"}
    for key, section in cases.items():
        path = write(tmp_path, GOOD + "\n" + section + "\n")
        result = run_cli("check", "-c", str(path))
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"trapline: config error: {path}: {key}: cannot resolve '{unknown}'")


def test_a_second_gps_collector_is_one_config_error(tmp_path: Path) -> None:
    # gpsd-py3 keeps one connection per process: a second collector would wait forever.
    config = tmp_path / "two.toml"
    config.write_text(
        '[collectors.front]\ntype = "gps"\nhost = "van"\n[collectors.back]\ntype = "gps"\nhost = "van"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"\[collectors.back\].type: a second 'gps' collector"):
        load_settings(config)
