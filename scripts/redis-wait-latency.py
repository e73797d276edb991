#!/usr/bin/env python3
"""Latency a replica confirmation (Redis WAIT) adds to a write, as OPENCLAW_REDIS_WAIT_REPLICAS
makes key changes wait: SET alone vs SET then WAIT 1, 3000 each, sequential on one connection.

Start a primary and a replica first, e.g.:
  redis-server --port 16390 --save "" --daemonize yes
  redis-server --port 16391 --save "" --replicaof 127.0.0.1 16390 --daemonize yes
then: python3 scripts/redis-wait-latency.py [PRIMARY_PORT]
"""
import socket, time, statistics, sys
def conn(port):
    s=socket.create_connection(("127.0.0.1",port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); return s
def cmd(s,*args):
    out=b"*%d\r\n"%len(args)+b"".join(b"$%d\r\n%s\r\n"%(len(a),a) for a in [x.encode() for x in args])
    s.sendall(out); buf=b""
    while not buf.endswith(b"\r\n"): buf+=s.recv(4096)
    return buf
s=conn(int(sys.argv[1]) if len(sys.argv) > 1 else 16390)
for label, wait in [("SET", False), ("SET+WAIT 1", True)]:
    lat=[]
    for i in range(3000):
        t=time.perf_counter(); cmd(s,"SET","k%d"%i,"v"*200)
        if wait: cmd(s,"WAIT","1","500")
        lat.append((time.perf_counter()-t)*1e6)
    lat.sort()
    print(f"{label:12s} p50 {lat[len(lat)//2]:7.0f} us  p99 {lat[int(len(lat)*0.99)]:7.0f} us  mean {statistics.mean(lat):7.0f} us")
