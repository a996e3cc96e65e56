#!/usr/bin/env python3
# The relay perf/scripts/outage-lines.sh puts between client and server: while CONTROL_FILE
# says "down", connections are refused and the relayed ones cut.
# usage: relay.py LISTEN_PORT TARGET_PORT CONTROL_FILE ; while CONTROL_FILE contains "down", refuse and cut
import socket, sys, threading, time, os
lp, tp, ctl = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
def down(): 
    try: return open(ctl).read().strip() == "down"
    except: return False
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except Exception: pass
    try: b.shutdown(socket.SHUT_WR)
    except Exception: pass
while True:
    while down():
        for c in conns:
            try: c.shutdown(socket.SHUT_RDWR)
            except Exception: pass
        conns.clear(); time.sleep(0.05)
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", lp)); l.listen(64); l.settimeout(0.05)
    while not down():
        try: a, _ = l.accept()
        except socket.timeout: continue
        b = socket.create_connection(("127.0.0.1", tp))
        conns += [a, b]
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
        threading.Thread(target=pump, args=(b, a), daemon=True).start()
    l.close()
