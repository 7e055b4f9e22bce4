"""Image reference parsing and normalisation, checked against what Docker does with the same strings."""

import pytest

from hutch.errors import InvalidArgument
from hutch.oci.digest import Digest
from hutch.oci.reference import Reference, is_valid_tag, normalize, parse, parse_tag_target

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
        ("127.0.0.1:5000/x/y:tag", "127.0.0.1:5000/x/y:tag", "127.0.0.1:5000/x/y:tag"),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest"),
        ("quay.io/a/b-c_d.e__f:v1.0-rc", "quay.io/a/b-c_d.e__f:v1.0-rc", "quay.io/a/b-c_d.e__f:v1.0-rc"),
        ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}", f"busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}", f"busybox:1@{DIGEST}"),
    ],
)
def test_normalises_like_docker(text, full, familiar):
    ref = normalize(text)
    assert str(ref) == full
    assert ref.familiar() == familiar


def test_fields_and_name_only():
    ref = parse("127.0.0.1:5000/x/y:tag")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("127.0.0.1:5000", "x/y", "tag", None)
    assert ref.name == "127.0.0.1:5000/x/y"
    assert parse("busybox").name_only and not parse("busybox:1").name_only
    assert parse(f"x@{DIGEST}").digest == Digest.parse(DIGEST)
    assert normalize(f"x@{DIGEST}").tag is None  # a digest alone gets no default tag
    assert Reference.parse("busybox") == parse("busybox")


def test_uppercase_first_component_is_a_domain():
    # Docker treats a first component with capitals as a registry host, which may have capitals.
    assert parse("Foo/bar").domain == "Foo"


@pytest.mark.parametrize(
    "text",
    [
        "Busybox",
        "busybox:",
        "-busybox",
        "a//b",
        ":tag",
        "",
        "busybox:tag with space",
        "busybox:" + "t" * 129,
        "a/B",
        "busybox@sha256:short",
        "a" * 64,
        "x/" + "a" * 260,
        "busybox:.tag",
        "a_/b",
    ],
)
def test_rejects_invalid(text):
    with pytest.raises(InvalidArgument):
        parse(text)


def test_error_names_the_text():
    with pytest.raises(InvalidArgument) as err:
        parse("Busybox")
    assert str(err.value).startswith('invalid reference format: "Busybox"')
    assert "lowercase" in str(err.value)


def test_longest_valid_tag():
    assert parse("busybox:" + "t" * 128).tag == "t" * 128
    assert is_valid_tag("v1.2_3-x") and not is_valid_tag("-v1")


def test_tag_target_refuses_digest_and_adds_latest():
    assert str(parse_tag_target("web")) == "docker.io/library/web:latest"
    with pytest.raises(InvalidArgument, match="digest"):
        parse_tag_target(f"web@{DIGEST}")
