"""A TCP relay for the SSH tests: listens on LISTEN_HOST (the lab bridge's address, which the
test hosts reach over their veths) and forwards each connection to TARGET_HOST:TARGET_PORT (a
test server on this machine's loopback). Prints the port it listens on, then serves until killed.

    python3 tcp_relay.py LISTEN_HOST TARGET_HOST TARGET_PORT
"""
import signal
import socket
import sys
import threading

# A parent may have blocked SIGTERM; let the test stop this relay like any process.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

listen_host, target_host, target_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((listen_host, 0))
server.listen(128)
print(server.getsockname()[1], flush=True)


def pump(src, dst):
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


while True:
    client, _ = server.accept()
    try:
        upstream = socket.create_connection((target_host, target_port))
    except OSError:
        client.close()
        continue
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
