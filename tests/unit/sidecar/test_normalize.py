"""The one request normalisation (sidecar.normalize): examples of each bypass class, and properties that no
path an RFC 3986 resolver (or an app that also merges slashes) maps into a denied prefix gets past a DENY."""

from __future__ import annotations

import contextlib
import re
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.normalize import MODES, Refused, canonical_host, check_fields, normalize_target, request_host, split_host
from sidecar.rbac import Subject, decide
from tests.unit.fuzzing import examples

DENY_ADMIN = {"name": "deny-admin", "action": "DENY",
              "rules": [{"to": [{"operation": {"paths": ["/admin/*", "/admin"]}}]}]}
ALLOW_PUBLIC = {"name": "allow-public", "action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/public/*"]}}]}]}


def allowed(policy: dict[str, object], target: str, mode: str = "MERGE_SLASHES") -> bool:
    """Whether the request gets past the sidecar: normalised (or refused with 400), then judged."""
    try:
        path = normalize_target(target, mode).split("?", 1)[0]
    except Refused:
        return False
    return decide([policy], Subject(method="GET", path=path, port=80)).allowed


# --- the reported bypasses, each refused or seen for what it is ------------------------------------

@pytest.mark.parametrize("target", ["//admin/x", "/%61dmin/x", "/./admin/x", "/x/../admin/x", "/%2e%2e/admin/x",
                                    "/x/%2E%2E/admin/x", "///admin//x", "/admin/./x", "/x/./../admin/x",
                                    "\\admin\\x", "/public/../admin/x", "/ADMIN/../admin/x", "/admin#frag",
                                    "//admin", "/admin/", "/adm%69n", "/a/b/../../admin/x", "/../../admin/x"])
def test_deny_bypasses_are_denied(target: str) -> None:
    assert not allowed(DENY_ADMIN, target)


@pytest.mark.parametrize("target", ["/admin%2Fx", "/admin%2fx", "/x%2F..%2Fadmin/x", "/admin%5Cx", "/%2F/admin"])
def test_escaped_slashes_are_refused_unless_decoded(target: str) -> None:
    for mode in ("BASE", "MERGE_SLASHES"):
        with pytest.raises(Refused) as exc:
            normalize_target(target, mode)
        assert exc.value.status == 400
    assert not allowed(DENY_ADMIN, target, "DECODE_AND_MERGE_SLASHES")  # decoded, then normalised again


@pytest.mark.parametrize("target", ["/public/../admin/x", "/public/%2e%2e/admin/x", "/public/..%2Fadmin"])
def test_allow_prefix_cannot_be_climbed_out_of(target: str) -> None:
    assert not allowed(ALLOW_PUBLIC, target)
    assert allowed(ALLOW_PUBLIC, "/public/./x/../y")


@pytest.mark.parametrize("target", ["/%zz", "/%4", "/a%", "/caf\u00e9", "/a\x00b", "/a\tb", "relative", "/a b",
                                    "/admin%00.png", "/a%0d%0aX-Injected:%201", "/a%7f", "/a%1F"])
def test_malformed_targets_are_refused(target: str) -> None:
    with pytest.raises(Refused):
        normalize_target(target, "MERGE_SLASHES")


def test_modes_and_query() -> None:
    assert normalize_target("//a/./b/../c?x=/../y#f", "NONE") == "//a/./b/../c?x=/../y"  # only the fragment goes
    assert normalize_target("//a/./b/../c?x=/../y", "BASE") == "//a/c?x=/../y"  # the query is left alone
    assert normalize_target("//a/./b/../c?x=/../y", "MERGE_SLASHES") == "/a/c?x=/../y"
    assert normalize_target("/a%2fb%5cc", "DECODE_AND_MERGE_SLASHES") == "/a/b/c"
    assert normalize_target("/%7euser/%41%3a%3f", "BASE") == "/~user/A%3A%3F"  # reserved stay escaped, in upper case
    assert normalize_target("/a/..", "BASE") == "/" and normalize_target("/a/b/.", "BASE") == "/a/b/"
    assert normalize_target("*", "BASE") == "*"
    # slashes merged before the dot segments go: `..` climbs one real segment, and the app gets the result
    assert normalize_target("/admin//..", "MERGE_SLASHES") == "/"
    assert normalize_target("/public//..//admin/x", "MERGE_SLASHES") == "/admin/x"


# --- properties ---------------------------------------------------------------------------------------

PIECES = st.sampled_from(["/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "admin", "%61dmin", "adm%69n", "x",
                          "public", "\\", "%2F", "%5C", "%2f", "%41", "?", "#", ";", "%25", "~", "a"])
TARGETS = st.lists(PIECES, min_size=1, max_size=14).map(lambda parts: "/" + "".join(parts))
UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def rfc_remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4's string-buffer algorithm, transcribed step by step (an independent oracle)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp, out = "/" + inp[4:], out[:max(out.rfind("/"), 0)]
        elif inp == "/..":
            inp, out = "/", out[:max(out.rfind("/"), 0)]
        elif inp in (".", ".."):
            inp = ""
        else:
            cut = inp.find("/", 1)
            seg, inp = (inp, "") if cut < 0 else (inp[:cut], inp[cut:])
            out += seg
    return out


def rfc3986_view(target: str, merge: bool, decode_slashes: bool) -> str:
    """How an app may resolve the target, written independently of sidecar.normalize: decode unreserved
    escapes (and slashes, for apps that do), read `\\` as `/`, optionally merge slashes, then remove the dot
    segments as RFC 3986 says."""
    path = target.split("#", 1)[0].split("?", 1)[0]

    def unescape(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        if (ch.isalnum() and ch.isascii()) or ch in "-._~":
            return ch
        if decode_slashes and ch in "/\\":
            return "/"
        return m.group(0)

    path = UNRESERVED_ESCAPE.sub(unescape, path).replace("\\", "/")
    if merge:
        path = re.sub("/+", "/", path)
    return rfc_remove_dot_segments(path)


def denied_prefix(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


@given(TARGETS, st.sampled_from(["MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]), st.booleans())
@examples(400)
def test_no_resolution_of_a_denied_path_is_allowed(target: str, mode: str, merge: bool) -> None:
    try:
        normalised = normalize_target(target, mode)
    except Refused:
        return  # refused outright: nothing reached the app
    # An app resolving the original as the mode says (independent oracle), and an app resolving what the sidecar
    # forwards (the normalised target) by its own rules, merging `//` or not: neither lands on a denied path
    # the policy let through.
    for app_sees in (rfc3986_view(target, True, mode == "DECODE_AND_MERGE_SLASHES"),
                     rfc3986_view(normalised.split("?", 1)[0], merge, False)):
        if denied_prefix(app_sees):
            assert not allowed(DENY_ADMIN, target, mode), (target, normalised, app_sees)


@given(TARGETS, st.sampled_from(MODES))
@examples(400)
def test_normalisation_is_stable_and_what_the_app_gets_resolves_to_itself(target: str, mode: str) -> None:
    try:
        once = normalize_target(target, mode)
    except Refused:
        return
    assert normalize_target(once, mode) == once  # the second sidecar sees what the first passed on
    if mode != "NONE":
        path = once.split("?", 1)[0]
        # the app, resolving what it got, lands exactly where the policy looked
        assert rfc3986_view(path, merge=mode != "BASE", decode_slashes=False) == path or path == "*"


@given(st.text(max_size=60), st.sampled_from(MODES))
@examples(300)
def test_any_text_is_normalised_or_refused(target: str, mode: str) -> None:
    try:
        normalize_target(target, mode)
    except Refused as exc:
        assert exc.status == 400


# --- hosts and header fields --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["ADMIN.x", "admin.x:8080", "admin.x.", "Admin.X.:80", " admin.x "])
def test_host_variants_are_one_host(value: str) -> None:
    assert canonical_host(value) == "admin.x"


def test_split_host_ports_and_ipv6() -> None:
    assert split_host("[::1]:8080") == ("[::1]", 8080) and split_host("[::1]") == ("[::1]", None)
    assert split_host("a.b:99999999") == ("a.b:99999999", None)  # not a port: compared as written


def test_request_host_rules() -> None:
    assert request_host([(b"Host", b"a.x")], "") == "a.x"
    assert request_host([(b"Host", b"a.x")], "A.X:80") == "A.X:80"  # the absolute-form authority wins
    assert request_host([], "a.x") == "a.x"
    for fields, authority in (([(b"Host", b"a.x"), (b"host", b"b.x")], ""),
                              ([(b"Host", b"a.x"), (b"HOST", b"a.x")], ""), ([(b"Host", b"public.x")], "admin.x")):
        with pytest.raises(Refused):
            request_host(fields, authority)


@pytest.mark.parametrize("value", ["a@admin.x", "admin.x:", "admin.x:80:80", "admin.x:123456", "admin.x, b.x",
                                   "admin.x b", "admin.x:+80", "[::1]admin.x", "adm%69n.x", "admin.x/p", "admin.x\\p"])
def test_hosts_apps_would_read_as_another_host_are_refused(value: str) -> None:
    for fields, authority in (([(b"Host", value.encode())], ""), ([], value)):
        with pytest.raises(Refused) as exc:
            request_host(fields, authority)
        assert exc.value.status == 400


def app_hosts(value: str) -> set[str]:
    """How apps pick the host out of a Host value: Express (up to the first colon after an IPv6 literal's
    `]`), Go's SplitHostPort when it succeeds, urllib's netloc parsing; lower-cased, trailing dot dropped."""
    views = {value.split(":", 1)[0] if not value.startswith("[") else value[:value.find("]") + 1]}
    if value.count(":") == 1 or value.startswith("["):
        views.add(value.rsplit(":", 1)[0] if value.rsplit(":", 1)[-1].isdigit() or value.endswith(":") else value)
    with contextlib.suppress(ValueError):
        views.add(urllib.parse.urlsplit("//" + value).hostname or "")
    return {v.lower().strip("[]").rstrip(".") for v in views}


@given(st.text(alphabet="admin.x:@,;%[]1_ -8", max_size=16))
@examples(400)
def test_an_accepted_host_is_the_host_apps_read(value: str) -> None:
    try:
        host = request_host([(b"Host", value.encode())], "")
    except Refused:
        return
    assert host is not None
    assert app_hosts(host) <= {(canonical_host(host) or "").strip("[]")}


@pytest.mark.parametrize("field", [(b"X-A", b"a\rTransfer-Encoding: chunked"), (b"X-A", b"a\nb"), (b"X-A", b"a\x00"),
                                   (b"X-A", b"\x7f"), (b"X-A", b"\x1b[31m"), (b"X A", b"v"), (b"X:A", b"v"),
                                   (b"", b"v"), (b"X\rA", b"v")])
def test_control_characters_are_refused(field: tuple[bytes, bytes]) -> None:
    with pytest.raises(Refused) as exc:
        check_fields([(b"Host", b"ok"), field])
    assert exc.value.status == 400


def test_clean_fields_pass() -> None:
    check_fields([(b"Host", b"ok"), (b"X-Tab", b"a\tb"), (b"X-Utf8", "é".encode()), (b"!#$%&'*+-.^_`|~", b"v")])


@given(st.binary(max_size=20), st.binary(max_size=40))
@examples(300)
def test_header_check_never_passes_a_control_character(name: bytes, value: bytes) -> None:
    try:
        check_fields([(name, value)])
    except Refused:
        return
    assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value) and name and re.fullmatch(rb"[!-~]+", name)
    assert b":" not in name
