#!/usr/bin/env python3
"""Fuzzes the REST API of a live `berth server` with schemathesis, from the server's own OpenAPI
document (`/api/v1/openapi.json`), as three callers: the owner of another team, a viewer of team
`main` and the instance admin. Fails on any 5xx answer, any answer the document does not describe
(status, content type, body schema) and any crash of the run.

    run.py BERTH_BINARY

`SCHEMATHESIS_EXAMPLES` (default 40) is the number of cases per operation and phase;
`SCHEMATHESIS_SEED` (default 20261203) makes a run repeatable.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Streams that stay open (server-sent events, followed logs), and the agents' protocol (its own
# credential, a WebSocket, archives), are not fuzzed here.
EXCLUDED_PATHS = r"(/watch|/logs$|/log$|/api/v1/agents/)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def expect(want, answer, what):
    status, body = answer
    if status != want:
        raise SystemExit(f"schemathesis setup: {what} answered {status} (wanted {want}): {body}")
    return body


def member(base, admin, team, role, email):
    """Invites `email` into `team` with `role`; returns the token the acceptance gives."""
    invite = expect(201, call(base, "POST", f"/api/v1/teams/{team}/invites", admin, {"role": role}), "an invitation")
    accepted = call(base, "POST", f"/api/v1/invites/{invite['token']}/accept", None,
                    {"email": email, "password": "a long enough password"})
    return expect(200, accepted, "accepting an invitation")["token"]


def main():
    binary = sys.argv[1]
    examples = os.environ.get("SCHEMATHESIS_EXAMPLES", "40")
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261203")
    data = tempfile.mkdtemp(prefix="berth-schemathesis-")
    api = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen(
        [binary, "server", "--data-dir", data, "--listen", api, "--ingress-listen", f"127.0.0.1:{free_port()}",
         "--no-local-agent"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://{api}"
    failed = []
    try:
        for _ in range(300):
            if server.poll() is not None:
                failed.append("setup")
                raise SystemExit(f"schemathesis setup: the server exited with {server.returncode}")
            try:
                if call(base, "GET", "/api/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            failed.append("setup")
            raise SystemExit("schemathesis setup: the server did not answer within 30 s")
        with open(os.path.join(data, "admin.token")) as f:
            admin = f.read().strip()
        # Real things for paths to name: an app in main (never running: no host) and a second team.
        app = {"name": "web", "image": "hello:v1", "port": 8080, "env": {"A": "1"}, "secrets": {"TOKEN": "x"}}
        expect(201, call(base, "POST", "/api/v1/teams/main/apps", admin, app), "creating an app")
        viewer = member(base, admin, "main", "viewer", "viewer@example.com")
        expect(201, call(base, "POST", "/api/v1/teams", admin, {"name": "other"}), "creating a team")
        foreign = member(base, admin, "other", "owner", "other@example.com")
        config = os.path.join(data, "schemathesis.toml")
        with open(config, "w") as f:
            f.write('[parameters]\nteam = { dictionary = "teams", probability = 0.7 }\n'
                    'app = { dictionary = "apps", probability = 0.7 }\n'
                    '[dictionaries.teams]\nvalues = ["main", "other"]\n'
                    '[dictionaries.apps]\nvalues = ["web"]\n')
        callers = [("the owner of another team", foreign), ("a viewer of main", viewer), ("the instance admin", admin)]
        for name, token in callers:
            # A run before may have deleted it (DELETE .../apps/{app} is fuzzed too).
            status = call(base, "POST", "/api/v1/teams/main/apps", admin, app)[0]
            if status not in (201, 409):
                raise SystemExit(f"schemathesis setup: recreating the app answered {status}")
            print(f"schemathesis: as {name}", flush=True)
            report = os.path.join(data, "report-" + name.split()[-1])
            command = [
                sys.executable, "-m", "schemathesis.cli", "--config-file", config, "run", f"{base}/api/v1/openapi.json",
                "-H", f"Authorization: Bearer {token}", "--checks", CHECKS,
                "--exclude-path-regex", EXCLUDED_PATHS,
                # Revoking the caller's own token would end the run's coverage, not find a bug.
                "--exclude-operation-id", "delete_tokens_id",
                "--phases", "examples,coverage,fuzzing", "-n", examples, "--seed", seed,
                "--request-timeout", "10", "--generation-database", "none", "--no-color",
                "--report", "junit", "--report-dir", report,
            ]
            # In the scratch directory: schemathesis keeps a cache where it runs.
            run = subprocess.run(command, capture_output=True, text=True, cwd=data)
            lines = run.stdout.splitlines()
            summary = lines[lines.index(next(l for l in lines if "SUMMARY" in l)):] if any("SUMMARY" in l for l in lines) else lines[-30:]
            print("\n".join(summary), flush=True)
            if run.returncode != 0:
                print(run.stdout, run.stderr, sep="\n", flush=True)
                failed.append(name)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        if failed:
            with open(os.path.join(data, "server.log")) as f:
                print("server log (tail):", *f.readlines()[-40:], sep="\n")
        shutil.rmtree(data, ignore_errors=True)
    if failed:
        raise SystemExit(f"schemathesis found failures as: {', '.join(failed)}")
    print("schemathesis: 0 failures for all three callers")


if __name__ == "__main__":
    main()
