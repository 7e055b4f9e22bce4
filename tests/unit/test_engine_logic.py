"""Pure logic of the engine: options parsing and the generated OCI spec."""

import pytest

from hutch.cli.format import duration, size
from hutch.engine.options import (
    RunOptions,
    check_network,
    parse_env,
    parse_env_file,
    parse_tmpfs,
    parse_volume,
)
from hutch.engine.specgen import build_spec, command_line
from hutch.errors import InvalidArgument

IMAGE = {
    "Entrypoint": ["/entry"],
    "Cmd": ["default"],
    "Env": ["PATH=/custom", "A=1"],
    "WorkingDir": "/srv",
    "User": "hutch",
}


def test_command_line_combines_entrypoint_and_cmd_like_docker():
    assert command_line(RunOptions("x"), IMAGE) == ["/entry", "default"]
    assert command_line(RunOptions("x", command=["other"]), IMAGE) == ["/entry", "other"]
    # --entrypoint discards the image's Cmd too
    assert command_line(RunOptions("x", entrypoint=["/bin/sh"]), IMAGE) == ["/bin/sh"]
    assert command_line(RunOptions("x", entrypoint=[], command=["ls"]), IMAGE) == ["ls"]


def test_spec_env_order_and_defaults():
    spec = build_spec(RunOptions("x", env=["A=2", "B=3"], tty=True), IMAGE, "host1", {})
    env = spec["process"]["env"]
    assert env == ["PATH=/custom", "A=2", "HOSTNAME=host1", "TERM=xterm", "B=3"]


def test_spec_defaults_match_docker():
    spec = build_spec(RunOptions("x"), {}, "h", {"/etc/hosts": "/x/hosts"})
    assert spec["process"]["cwd"] == "/"
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in spec["process"]["env"]
    assert {ns["type"] for ns in spec["linux"]["namespaces"]} == {"pid", "mount", "uts", "ipc", "network"}
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert "/proc/sys" in spec["linux"]["readonlyPaths"]
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests[:4] == ["/proc", "/dev", "/dev/pts", "/sys"]
    assert "/etc/hosts" in dests


def test_host_network_keeps_host_netns_and_user_override():
    spec = build_spec(RunOptions("x", network="host", user="0", workdir="/tmp"), IMAGE, "h", {})
    assert "network" not in {ns["type"] for ns in spec["linux"]["namespaces"]}
    assert spec["annotations"]["io.hutch.user"] == "0"
    assert spec["process"]["cwd"] == "/tmp"


def test_volume_parsing():
    vol = parse_volume("/data:/mnt:ro")
    assert (vol.source, vol.destination, vol.readonly) == ("/data", "/mnt", True)
    for bad in ("/data", "relative:/mnt", "/a:rel", "/a:/b:rx", "/a:/b:ro,rw"):
        with pytest.raises(InvalidArgument, match="invalid volume"):
            parse_volume(bad)


def test_tmpfs_and_env_parsing(tmp_path, monkeypatch):
    assert parse_tmpfs("/run:size=1m,mode=700").options == ["size=1m", "mode=700"]
    monkeypatch.setenv("FROM_HOST", "yes")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    assert parse_env(["A=1", "FROM_HOST", "UNSET_ONE"]) == ["A=1", "FROM_HOST=yes"]
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nX=1\nFROM_HOST\n")
    assert parse_env_file(str(env_file)) == ["X=1", "FROM_HOST=yes"]
    env_file.write_text("BAD KEY=1\n")
    with pytest.raises(InvalidArgument, match="env:1"):
        parse_env_file(str(env_file))


def test_network_modes():
    assert check_network("host") == "host"
    assert check_network("default") == "bridge"
    assert check_network("mynet") == "mynet"  # existence is checked by the engine at create time
    assert check_network("container:web") == "container:web"
    with pytest.raises(InvalidArgument, match="invalid --network"):
        check_network("bad name")


def test_human_formats():
    assert duration(0.5) == "Less than a second"
    assert duration(90) == "About a minute"
    assert duration(7200) == "2 hours"
    assert size(1_234_567) == "1.23MB"
    assert size(999) == "999B"


def test_command_word_found_after_global_options():
    from hutch.cli.main import command_of

    assert command_of(["--root", "/x", "--debug", "run", "-it", "busybox"]) == "run"
    assert command_of(["images"]) == "images"
    assert command_of(["--help"]) is None
    assert command_of(["frobnicate"]) is None


def test_parser_with_one_command_parses_like_the_full_one():
    from hutch.cli.main import build_parser

    argv = ["--root", "/x", "run", "--rm", "-e", "A=1", "-h", "box", "busybox", "sh", "-c", "echo hi"]
    small, full = build_parser("run").parse_args(argv), build_parser().parse_args(argv)
    assert vars(small) == vars(full)
    assert small.hostname == "box" and small.command == ["sh", "-c", "echo hi"]
