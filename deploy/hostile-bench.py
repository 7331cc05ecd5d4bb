#!/usr/bin/env python3
"""Issue 12's flood target, side by side with an idle run, on a 3-node release cluster.

    deploy/hostile-bench.py target/release/dpin target/release/dpin-sim [SECONDS]
    ATTACK_EXTRA="--rotate-every 2000" deploy/hostile-bench.py ...   # rotating peer ids
    HTTP_FLOOD=8 deploy/hostile-bench.py ...   # an HTTP client flooding node 0's API instead

Starts 3 `dpin node`s on loopback (DNS on, RRL off, --no-probe), writes 20 honest names, then
measures node 0's resolve latency over HTTP and DNS (one of each every 20 ms) for SECONDS idle
and SECONDS while `dpin-sim attack` sends 10k invalid signatures/s plus 1k junk-zone records/s
at node 0; prints p50/p99, node 0's RSS growth, when the attacker was disconnected, bans, and
honest records lost. Removes everything it created.

With HTTP_FLOOD=K the flood phase is an HTTP client instead: K threads sending resolves to
node 0's API as fast as they can from the source address 127.0.0.2 (its own client to the
node's per-client limits; the nodes run with DPIN_API_LIMIT_LOOPBACK=1 so loopback clients
are limited too, at the default rate), while the honest client measures from 127.0.0.1; it
prints how many flood requests were answered and refused (429) and node 0's refusal counters. (The same measurement as the ignored test
`flood_target_measured_side_by_side_with_an_idle_run` in tests/hostile_peer.rs, without a
release build of the test crate.)
"""
import json, os, socket, struct, subprocess, sys, tempfile, time, urllib.request, random
DPIN = sys.argv[1]; SIM = sys.argv[2]; SECS = float(sys.argv[3]) if len(sys.argv) > 3 else 15
HTTP_FLOOD = int(os.environ.get("HTTP_FLOOD", "0"))
base = tempfile.mkdtemp(prefix="c_hostile_")
procs = []
def start(i, boot):
    d = os.path.join(base, f"n{i}"); os.makedirs(d)
    args = [DPIN, "node", "--data-dir", d, "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
            "--dns", "127.0.0.1:0", "--dns-rrl-rate", "0", "--no-probe"]
    for b in boot: args += ["--bootstrap", b]
    env = dict(os.environ)
    if HTTP_FLOOD: env["DPIN_API_LIMIT_LOOPBACK"] = "1"
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=open(os.path.join(d, "log"), "w"), text=True)
    procs.append(p)
    info = {"listen": []}
    while "api" not in info or "dns" not in info:
        k, _, v = p.stdout.readline().strip().partition(" ")
        if k == "listen": info["listen"].append(v)
        elif k: info[k] = v
    return info
def http(api, path, body=None):
    req = urllib.request.Request(f"http://{api}{path}", data=body, headers={"content-type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=5) as r: return json.load(r)
def rss(p):
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def metric(api, series):
    with urllib.request.urlopen(f"http://{api}/metrics", timeout=5) as r:
        for l in r.read().decode().splitlines():
            if l.startswith(series + " "): return int(float(l.split()[-1]))
    return 0
try:
    n0 = start(0, []); boot = [a for a in n0["listen"] if "/tcp/" in a][:1]
    n1 = start(1, boot); n2 = start(2, boot); nodes = [n0, n1, n2]
    key = os.path.join(base, "zone.key")
    zone = subprocess.run([DPIN, "keygen", "--out", key], capture_output=True, text=True).stdout.strip()
    time.sleep(3)
    names = []
    for i in range(20):
        out = subprocess.run([DPIN, "publish", "--key", key, "--api", n1["api"], f"svc{i}", f"10.0.0.{i+1}:443"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        names.append(f"svc{i}.{zone}")
    def holds(n):
        ok = 0
        for nm in names:
            try: ok += http(n["api"], f"/v1/resolve/{nm}").get("seq") is not None
            except Exception: pass
        return ok
    deadline = time.time() + 30
    while not all(holds(n) == 20 for n in nodes):
        assert time.time() < deadline, "honest names did not spread"; time.sleep(0.5)
    dns_host, dns_port = n0["dns"].rsplit(":", 1); dns = (dns_host, int(dns_port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(2)
    def query(name, qid):
        q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in (name + ".dpin").split(".")) + b"\0" + struct.pack(">HH", 1, 1)
        sock.sendto(q, dns); r = sock.recv(1500)
        return struct.unpack(">H", r[:2])[0] == qid and struct.unpack(">H", r[6:8])[0] > 0
    def measure(stop):
        h, d, fail, i = [], [], 0, 0
        while not stop():
            t0 = time.perf_counter(); nm = names[i % 20]; i += 1
            try:
                t = time.perf_counter(); v = http(n0["api"], f"/v1/resolve/{nm}")
                (h.append((time.perf_counter() - t) * 1000) if v.get("seq") else None)
            except Exception: fail += 1
            try:
                t = time.perf_counter()
                if query(nm, i & 0xffff): d.append((time.perf_counter() - t) * 1000)
                else: fail += 1
            except Exception: fail += 1
            time.sleep(max(0, 0.02 - (time.perf_counter() - t0)))
        return h, d, fail
    def pct(v, p):
        s = sorted(v); return s[round((len(s) - 1) * p)] if s else float("nan")
    def line(what, m):
        h, d, f = m
        return f"{what}: http p50 {pct(h,.5):.2f} ms p99 {pct(h,.99):.2f} ms ({len(h)}); dns p50 {pct(d,.5):.2f} ms p99 {pct(d,.99):.2f} ms ({len(d)}); failures {f}"
    rss0 = rss(procs[0]); t = time.time()
    idle = measure(lambda: time.time() - t > SECS); rss1 = rss(procs[0])
    if HTTP_FLOOD:
        import threading, http.client as httpclient  # not `import http.client`: it would shadow http()
        counts = {"ok": 0, "refused": 0, "other": 0, "error": 0}; lock = threading.Lock()
        host, port = n0["api"].rsplit(":", 1); stop_at = time.time() + SECS
        def flooder():
            while time.time() < stop_at:
                try:
                    c = httpclient.HTTPConnection(host, int(port), timeout=5, source_address=("127.0.0.2", 0))
                    c.request("GET", f"/v1/resolve/{names[0]}"); st = c.getresponse().status; c.close()
                    k = "ok" if st == 200 else "refused" if st == 429 else "other"
                except Exception: k = "error"
                with lock: counts[k] += 1
        ths = [threading.Thread(target=flooder) for _ in range(HTTP_FLOOD)]
        for th in ths: th.start()
        flood = measure(lambda: time.time() > stop_at); rss2 = rss(procs[0])
        for th in ths: th.join()
        lost = sum(20 - holds(n) for n in nodes)
        print(line("idle ", idle)); print(line("flood", flood))
        print(f"node 0 RSS KiB: start {rss0}, after idle {rss1} ({rss1-rss0:+}), after flood {rss2} ({rss2-rss1:+} over idle)")
        total = sum(counts.values())
        print(f"HTTP flooder ({HTTP_FLOOD} threads from 127.0.0.2, {SECS:.0f} s): {total} requests ({total/SECS:.0f}/s): answered {counts['ok']}, refused 429 {counts['refused']}, other {counts['other']}, errors {counts['error']}")
        rr = 'dpin_http_refused_total{reason="rate"}'; rc = 'dpin_http_refused_total{reason="concurrency"}'
        print(f"node 0: refused by rate {metric(n0['api'], rr)}, by concurrency {metric(n0['api'], rc)}")
        print(f"honest records lost (3 nodes x 20): {lost}; load average {os.getloadavg()}")
        sys.exit(0)
    target = [a for a in n0["listen"] if "/tcp/" in a][0]
    att = subprocess.Popen([SIM, "attack", "--target", target, "--kind", "invalid-signature:10000", "--kind", "junk-zones:1000", "--duration", f"{int(SECS)}s"] + os.environ.get("ATTACK_EXTRA", "").split(), stdout=subprocess.PIPE, text=True)
    flood = measure(lambda: att.poll() is not None); rss2 = rss(procs[0])
    report = json.loads(att.stdout.read())
    lost = sum(20 - holds(n) for n in nodes)
    print(line("idle ", idle)); print(line("flood", flood))
    print(f"node 0 RSS KiB: start {rss0}, after idle {rss1} ({rss1-rss0:+}), after flood {rss2} ({rss2-rss1:+} over idle)")
    print(f"attacker: sent {report['sent']}, not sent {report['not_sent']}, disconnected after {report['disconnected_after_ms']} ms")
    gl = 'dpin_net_bans_total{reason="graylisted"}'
    print(f"node 0: ingest bans {metric(n0['api'],'dpin_peer_bans_total')}, graylisted bans {metric(n0['api'],gl)}, gossip accepted {metric(n0['api'],'dpin_gossip_accepted_total')}, rejected {metric(n0['api'],'dpin_gossip_rejected_total')}")
    print(f"honest records lost (3 nodes x 20): {lost}; load average {os.getloadavg()}")
finally:
    for p in procs: p.kill()
    for p in procs: p.wait()
    subprocess.run(["rm", "-rf", base])
