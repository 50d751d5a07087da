"""RemoteClassifier overhead on a local HTTP endpoint (the digits MLP of the conformance suite):
time per request by batch size, and SquareAttack through HTTP against a local black box.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_remote.py
"""

import time

import numpy as np

from bastion.attacks.evasion import SquareAttack
from bastion.estimators import BlackBoxClassifier, RemoteClassifier
from bastion.testing._problems import _digits_endpoint, torch_problem


def main() -> None:
    service = _digits_endpoint()
    problem = torch_problem(24)
    x, y = problem.x, problem.y
    many = np.repeat(x, 10, axis=0)
    for batch_size in (1, 16, 64):
        clf = RemoteClassifier(
            service.url,
            input_shape=(1, 8, 8),
            nb_classes=10,
            clip_values=(0, 1),
            batch_size=batch_size,
        )
        clf.predict(x[:4])  # warm up
        start = time.perf_counter()
        clf.predict(many)
        took = time.perf_counter() - start
        requests = -(-len(many) // batch_size)
        print(
            f"batch_size={batch_size}: {took * 1e3:.1f} ms for {len(many)} samples, "
            f"{took / requests * 1e3:.2f} ms per request"
        )
    local = BlackBoxClassifier(
        service.predict, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1)
    )
    remote = RemoteClassifier(service.url, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1))
    for name, est in (("local BlackBoxClassifier", local), ("RemoteClassifier", remote)):
        attack = SquareAttack(est, eps=0.3, max_queries=200, random_state=0)
        start = time.perf_counter()
        attack.generate(x, y)
        took = time.perf_counter() - start
        print(
            f"Square (eps=0.3, max_queries=200) on 24 digits, {name}: {took:.2f} s, "
            f"{int(attack.queries_.sum())} queries, {int(attack.success_.sum())} fooled"
        )


if __name__ == "__main__":
    main()
