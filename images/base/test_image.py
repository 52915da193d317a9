"""base: the blessed root. Run by `hubstack ci build` against a fresh image (see
hubstack/ci/imagetest.py).
"""


def test_default_user_is_jovyan_uid_1000_not_root(run):
    assert run("id", "-u").check().strip() == "1000"
    assert run("id", "-un").check().strip() == "jovyan"


def test_tini_is_pid_1(run):
    assert "tini" in run("sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline").check()


def test_ca_bundle_is_installed(run):
    run("test", "-s", "/etc/ssl/certs/ca-certificates.crt").check()


def test_utf8_locale(run):
    assert "UTF-8" in run("sh", "-c", "echo $LANG").check()


def test_ca_bundle_holds_each_certificate_once(run):
    # The extra bundle (by default the host's whole system bundle) adds only what Debian's
    # lacks: each duplicate costs every TLS context that loads the bundle its parsing.
    out = run(
        "sh",
        "-c",
        "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt; "
        "sed -n '/BEGIN CERT/,/END CERT/p' /etc/ssl/certs/ca-certificates.crt "
        "| tr -d '\\n' | sed 's/-----END CERTIFICATE-----/&\\n/g' | sort | uniq | grep -c BEGIN",
    ).check()
    total, unique = out.split()
    assert int(total) > 100 and total == unique, out
