"""`/api/users/public_keys/*` on our server and on the real dstack server: the same keys give
the same names, types and fingerprints; duplicates and bad keys get the same errors."""
import json
import subprocess
import urllib.error
import urllib.request


def post(server, path, body):
    req = urllib.request.Request(server["url"] + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {server['token']}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def keys(tmp_path):
    out = []
    for kind, comment in (("ed25519", "me@laptop"), ("rsa", ""), ("ecdsa", "ci key")):
        p = tmp_path / f"k_{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(p)], check=True)
        out.append(p.with_suffix(".pub").read_text().strip())
    return out


def scenario(server, ks):
    seen = []
    for i, k in enumerate(ks):
        body = {"key": k} if i != 1 else {"key": k, "name": "named"}
        status, r = post(server, "/api/users/public_keys/add", body)
        assert status == 200, (server["url"], r)
        seen.append((status, r["name"], r["type"], r["fingerprint"]))
    status, dup = post(server, "/api/users/public_keys/add", {"key": ks[0]})
    seen.append(("dup", status, dup["detail"][0]["code"]))
    for bad in ("nonsense", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", ks[0].replace("ssh-ed25519", "ssh-rsa", 1)):
        status, r = post(server, "/api/users/public_keys/add", {"key": bad})
        seen.append(("bad", status, r["detail"][0]["msg"]))
    status, lst = post(server, "/api/users/public_keys/list", {})
    seen.append(("list", status, sorted((k["name"], k["fingerprint"]) for k in lst)))
    status, _ = post(server, "/api/users/public_keys/delete", {"ids": [lst[0]["id"]]})
    status2, lst2 = post(server, "/api/users/public_keys/list", {})
    seen.append(("delete", status, status2, len(lst2)))
    return seen


def test_public_keys_match_dstack(our_server, python_server, tmp_path):
    ks = keys(tmp_path)
    assert scenario(our_server, ks) == scenario(python_server, ks)
