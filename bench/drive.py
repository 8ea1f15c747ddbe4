#!/usr/bin/env python3
"""Runs the side-by-side benchmark that bench/run sets up: serves every
variant of bench-app at once, checks each answers right, then drives them
with wrk in rounds (the order of variants rotated each round) and prints a
Markdown table of medians.

Every figure it prints was measured in this run; a variant that returned an
error or a non-2xx response is reported as such, never with a speed.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REDIS_VARIANTS = {"ms-redis", "ms-redis-cache", "ts-redis", "as-redis"}
BARE = ("axum", "actix")
# Variants that keep the session in the cookie: a request that reuses an old
# cookie sees the old session, so the check's second write counts 1 again.
CLIENT_SIDE = ("as-cookie",)


def request(port, path, cookie=None):
    """GET path; (status, body, Cookie header value the reply set)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    reply = conn.getresponse()
    body = reply.read().decode()
    pairs = [h.split(";", 1)[0] for h in reply.headers.get_all("Set-Cookie") or []]
    conn.close()
    return reply.status, body, "; ".join(p for p in pairs if not p.endswith("="))


def wait_until_serving(port, proc, name):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench-app {name} exited with {proc.returncode}")
        try:
            request(port, "/")
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench-app {name} did not answer on port {port} within a minute")


def logged_in(port, user):
    status, body, cookie = request(port, f"/login?u={user}")
    if status != 200 or body != "ok":
        raise RuntimeError(f"/login?u={user} answered {status} {body!r}")
    return cookie


def prepare(name, port, sessions, folder):
    """Checks the variant's answers and writes its cookie files: one hot
    session, and `sessions` distinct ones."""
    hot = logged_in(port, "bench")
    # Bare frameworks answer fixed text; a session counts.
    expectations = [("/", "user=bench"), ("/write", "n=1"), ("/write", "n=1" if name in BARE + CLIENT_SIDE else "n=2")]
    for path, expected in expectations:
        status, body, _ = request(port, path, hot)
        if status != 200 or body != expected:
            sys.exit(f"{name}: GET {path} answered {status} {body!r}, not {expected!r}: not timed")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        many = list(pool.map(lambda i: logged_in(port, f"u{i}"), range(sessions)))
    for i in (0, sessions // 2, sessions - 1):
        status, body, _ = request(port, "/", many[i])
        expected = "user=bench" if name in BARE else f"user=u{i}"
        if status != 200 or body != expected:
            sys.exit(f"{name}: session {i} of {sessions} answered {status} {body!r}: not timed")
    files = {}
    for label, cookies in (("hot", [hot]), ("many", many)):
        path = os.path.join(folder, f"{name}-{label}.txt")
        with open(path, "w") as out:
            out.write("\n".join(cookies) + "\n")
        files[label] = path
    return files


def redis_stats(url):
    """(commands, CPU µs) of the Redis at url so far, or None without Redis.

    Commands are summed over INFO commandstats, which counts the commands a
    script runs as well as the script. CPU is the server's own (INFO cpu,
    user + system): commandstats' usec would count a script's commands
    twice (in the script's time and their own) and leaves out reading and
    writing the sockets.
    """
    if not url:
        return None
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)

    def info(section):
        return subprocess.run(["redis-cli", "-h", host, "-p", port, "INFO", section],
                              capture_output=True, text=True, check=True).stdout

    calls = 0
    for line in info("commandstats").splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
    cpu = dict(line.split(":", 1) for line in info("cpu").splitlines() if ":" in line)
    usec = (float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])) * 1e6
    return calls, usec


def wrk(port, path, connections, seconds, cookies, script):
    threads = min(connections, 2)
    env = dict(os.environ, BENCH_COOKIES=cookies)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, env=env, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", required=True)
    parser.add_argument("--variants", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", default="64,1")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--script", required=True)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"))
    args = parser.parse_args()
    variants = args.variants.split(",")
    connections = [int(c) for c in args.connections.split(",")]

    folder = tempfile.mkdtemp(prefix="multisession-bench-")
    procs, ports, files = {}, {}, {}
    try:
        for i, name in enumerate(variants):
            ports[name] = 18100 + i
            procs[name] = subprocess.Popen([args.app, name, str(ports[name])])
        for name in variants:
            wait_until_serving(ports[name], procs[name], name)
            files[name] = prepare(name, ports[name], args.sessions, folder)
            print(f"checked {name}: right answers, {args.sessions} sessions ready", file=sys.stderr)

        # results[(conns, label, route)][variant] = list of per-round dicts
        results = {}
        configs = [(c, label, route) for c in connections for label in ("hot", "many") for route in ("/", "/write")]
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for config in configs:
                conns, label, route = config
                for name in order:
                    before = redis_stats(args.redis_url) if name in REDIS_VARIANTS else None
                    run = wrk(ports[name], route, conns, args.seconds, files[name][label], args.script)
                    after = redis_stats(args.redis_url) if name in REDIS_VARIANTS else None
                    if before and after and run["requests"]:
                        run["redis_calls"] = (after[0] - before[0]) / run["requests"]
                        run["redis_usec"] = (after[1] - before[1]) / run["requests"]
                    run["rps"] = run["requests"] / (run["duration_us"] / 1e6)
                    results.setdefault(config, {}).setdefault(name, []).append(run)
            print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
        report(results, variants, args)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait()


def report(results, variants, args):
    print(f"{args.rounds} rounds of {args.seconds} s per variant and case, order rotated each round; "
          f"{args.sessions} distinct sessions for \"many\".\n")
    for (conns, label, route), by_variant in sorted(results.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2])):
        mode = "read (GET /)" if route == "/" else "write (GET /write)"
        sessions = "one hot session" if label == "hot" else f"{args.sessions} sessions"
        print(f"### {conns} connection{'s' if conns > 1 else ''}, {sessions}, {mode}\n")
        print("| variant | requests/s | × bare axum | × bare actix | p50 | p99 | Redis cmds/req | Redis CPU µs/req |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in variants:
            runs = by_variant.get(name, [])
            bad = sum(r["errors"] + r["non2xx"] for r in runs)
            if bad:
                print(f"| {name} | {bad} errors or non-2xx responses: no speed | | | | | | |")
                continue

            def ratio(base):
                base_runs = by_variant.get(base, [])
                if not base_runs:
                    return "–"
                return f"{statistics.median(r['rps'] / b['rps'] for r, b in zip(runs, base_runs)):.2f}"

            def med(key, fmt):
                values = [r[key] for r in runs if key in r]
                return fmt.format(statistics.median(values)) if values else ""

            print(f"| {name} | {med('rps', '{:,.0f}')} | {ratio('axum')} | {ratio('actix')} | "
                  f"{med('p50_us', '{:,.0f} µs')} | {med('p99_us', '{:,.0f} µs')} | "
                  f"{med('redis_calls', '{:.2f}')} | {med('redis_usec', '{:.1f}')} |")
        print()


if __name__ == "__main__":
    main()
