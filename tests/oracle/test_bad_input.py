"""Bad input: malformed JSON, unknown fields, wrong types, bad names, bad YAML, oversize
bodies. Each gets a clear 4xx in dstack's shape — the same status as the real dstack server
gives — and leaves the state unchanged."""
import json

import requests

BAD = [
    ("/api/users/create", "{not json"),
    ("/api/users/create", json.dumps({"username": "ok1", "global_role": "user", "unknown_field": 1})),
    ("/api/users/create", json.dumps({"username": "ok2", "global_role": "superuser"})),
    ("/api/users/create", json.dumps({"username": "ok3"})),
    ("/api/users/create", json.dumps({"username": "bad name!", "global_role": "user"})),
    ("/api/users/create", json.dumps({"username": "x" * 61, "global_role": "user"})),
    ("/api/users/create", json.dumps([1, 2, 3])),
    ("/api/users/delete", json.dumps({"users": "admin"})),
    ("/api/users/delete", json.dumps({"users": ["admin"]})),
    ("/api/users/delete", json.dumps({"users": ["nobody-here"]})),
    ("/api/projects/create", json.dumps({"project_name": "bad/name"})),
    ("/api/projects/create", json.dumps({"project_name": ""})),
    ("/api/projects/main/set_members", json.dumps({"members": [{"username": "admin", "project_role": "owner"}]})),
    ("/api/projects/main/set_members", json.dumps({"members": [
        {"username": "admin", "project_role": "admin"}, {"username": "admin", "project_role": "user"}]})),
    ("/api/projects/main/add_members", json.dumps({"members": [{"username": "ghost", "project_role": "user"}]})),
    ("/api/projects/main/remove_members", json.dumps({"usernames": ["ghost"]})),
    ("/api/project/main/backends/create_yaml", json.dumps({"config_yaml": "type: [unclosed"})),
    ("/api/project/main/backends/create_yaml", json.dumps({"config_yaml": "type: nosuchcloud\n"})),
    ("/api/project/main/secrets/create_or_update", json.dumps({"name": "bad name", "value": "v"})),
    ("/api/project/main/secrets/create_or_update", json.dumps({"name": "OK", "value": "v" * 5001})),
    ("/api/project/main/secrets/delete", json.dumps({"secrets_names": ["NOPE"]})),
    ("/api/project/main/secrets/get", json.dumps({})),
]


def snapshot(url, token):
    h = {"Authorization": f"Bearer {token}"}
    users = sorted(u["username"] for u in requests.post(url + "/api/users/list", headers=h, json={}).json())
    projects = requests.post(url + "/api/projects/list", headers=h, json={}).json()
    main = requests.post(url + "/api/projects/main/get", headers=h).json()
    secrets = requests.post(url + "/api/project/main/secrets/list", headers=h).json()
    return users, sorted(p["project_name"] for p in projects), len(main["members"]), main["backends"], secrets


def run(server):
    h = {"Authorization": f"Bearer {server['token']}", "Content-Type": "application/json"}
    before = snapshot(server["url"], server["token"])
    statuses = []
    for path, body in BAD:
        r = requests.post(server["url"] + path, headers=h, data=body, timeout=30)
        statuses.append(r.status_code)
        if not 400 <= r.status_code < 500:
            continue
        detail = r.json().get("detail")
        assert detail, r.text
        if r.status_code == 400:
            # dstack's shape: a list of {msg, code[, fields]} — nothing else, or the Py client crashes.
            assert isinstance(detail, list) and all(set(d) <= {"msg", "code", "fields"} for d in detail), r.text
    assert snapshot(server["url"], server["token"]) == before
    return statuses


def test_bad_input_matches_real_dstack_and_changes_nothing(our_server, python_server):
    ours = run(our_server)
    theirs = run(python_server)
    diffs = [(BAD[i][0], BAD[i][1][:60], o, t) for i, (o, t) in enumerate(zip(ours, theirs)) if o != t]
    assert not diffs, "\n".join(map(str, diffs))
    assert all(400 <= s < 500 for s in ours), list(zip([b[0] for b in BAD], ours))


def test_oversize_body_is_rejected(our_server):
    h = {"Authorization": f"Bearer {our_server['token']}", "Content-Type": "application/json"}
    big = json.dumps({"name": "BIG", "value": "x" * (3 * 1024 * 1024)})
    r = requests.post(our_server["url"] + "/api/project/main/secrets/create_or_update", headers=h, data=big)
    assert r.status_code == 413
    r = requests.post(our_server["url"] + "/api/project/main/secrets/list", headers=h)
    assert r.json() == []
