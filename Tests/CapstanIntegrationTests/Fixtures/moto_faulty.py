"""moto's EC2 with capacity faults: the first N RunInstances calls (CAPSTAN_FAULT_CAPACITY_FAILURES,
default 2) fail with a real InsufficientInstanceCapacity error response; later calls succeed.
Usage: python3 moto_faulty.py PORT (listens on 127.0.0.1 only)."""
import os
import sys
import threading
import time

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instances import InstanceBackend
from moto.server import ThreadedMotoServer

failures = int(os.environ.get("CAPSTAN_FAULT_CAPACITY_FAILURES", "2"))
lock = threading.Lock()
calls = {"n": 0}
original = InstanceBackend.run_instances


def run_instances(self, *args, **kwargs):
    with lock:
        calls["n"] += 1
        n = calls["n"]
    if n <= failures:
        raise EC2ClientError(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity in the Availability Zone you requested. "
            "Our system will be working on provisioning additional capacity.",
        )
    return original(self, *args, **kwargs)


InstanceBackend.run_instances = run_instances
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]))
server.start()
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    server.stop()
