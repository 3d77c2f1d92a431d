"""Two-way TCP throughput on one connection (both ends send and receive N MB at once), the
socket-level reference for bench/mpi_sendrecv_probe.c. On a 2-node simulator:

    ip netns exec cnprobe1 python3 bench/tcp_bidir_probe.py server 198.51.100.2 5556 16 8 &
    ip netns exec cnprobe0 python3 bench/tcp_bidir_probe.py client 198.51.100.2 5556 16 8

Arguments: server|client, address, port, MB each way, iterations.
"""
import socket, sys, threading, time
mode, host, port, mb, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
N = mb << 20
def pump(s, n):
    buf = b'x' * (1 << 20); left = n
    while left > 0: left -= s.send(buf[:min(left, len(buf))])
def drain(s, n):
    left = n
    while left > 0: left -= len(s.recv(min(left, 1 << 20)))
if mode == 'server':
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind((host, port)); ls.listen(1); s = ls.accept()[0]
else:
    s = socket.socket(); s.connect((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for it in range(iters):
    s.send(b'k'); s.recv(1)  # barrier
    t0 = time.time()
    th = [threading.Thread(target=pump, args=(s, N)), threading.Thread(target=drain, args=(s, N))]
    for t in th: t.start()
    for t in th: t.join()
    dt = time.time() - t0
    if mode == 'client': print(f'it {it}: {mb*8/dt:.1f} Mbit/s each way', flush=True)
