#!/usr/bin/env python3
"""Drives one request kind of the benchmark's scenarios, one request at a time, for
scripts/profile.sh: creates a key (and, for send-message, sessions holding the benchmark's
10-turn history), warms up, runs --before-measure, sends --calls measured requests, runs
--after-measure. Every answer must be a success."""

import argparse
import http.client
import json
import subprocess
import sys
import urllib.parse

HISTORY = [
    message
    for turn in range(10)
    for message in (
        {
            "role": "user",
            "content": f"Turn {turn}: could you summarise what we decided about the quarterly report, and list the open questions that remain?",
        },
        {
            "role": "assistant",
            "content": f"Turn {turn}: we agreed to ship the report on Friday with the revised revenue table; the open questions are the currency conversion and who signs off the appendix.",
        },
    )
]
NEW_TURN = "Thanks. Please draft the e-mail announcing it."
WARM_UP = 20


class Client:
    def __init__(self, base):
        url = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)

    def post(self, path, bearer, body, expect):
        self.conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        )
        response = self.conn.getresponse()
        raw = response.read()
        if response.status != expect:
            sys.exit(f"POST {path}: {response.status} {raw[:300]!r}")
        return json.loads(raw)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--scenario", choices=["s1", "s2"], required=True)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--before-measure", required=True)
    parser.add_argument("--after-measure", required=True)
    args = parser.parse_args()

    client = Client(args.base)
    limits = {"requestsPerMinute": 10**9, "tokensPerMinute": 10**12, "contextTokensPerMinute": 10**12}
    key = client.post("/api/v1/keys", args.token, {"name": "profile", "limits": limits}, 201)["data"]["key"]

    if args.scenario == "s2":
        body = {
            "model": "zai/glm-4.7-flash",
            "messages": [{"role": "user", "content": "Hello! Say something short."}],
            "max_tokens": 32,
        }

        def call(_):
            client.post("/v1/chat/completions", key, body, 200)

    else:
        # One fresh session per send, so every measured send carries the same 10-turn history.
        sessions = [
            client.post(
                "/api/v1/sessions", key, {"model": "zai/glm-4.7-flash", "messages": HISTORY}, 201
            )["data"]["sessionId"]
            for _ in range(WARM_UP + args.calls)
        ]
        body = {"message": {"role": "user", "content": NEW_TURN}, "maxTokens": 32}

        def call(i):
            client.post(f"/api/v1/sessions/{sessions[i]}/messages", key, body, 200)

    for i in range(WARM_UP):
        call(i)
    subprocess.run(args.before_measure, shell=True, check=True)
    for i in range(args.calls):
        call(WARM_UP + i)
    subprocess.run(args.after_measure, shell=True, check=True)
    print(f"{args.scenario}: {args.calls} measured calls")


if __name__ == "__main__":
    main()
