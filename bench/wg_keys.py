#!/usr/bin/env python3
"""Two x25519 key pairs for the wireguard-go baselines, printed as `PRIV_A PUB_A PRIV_B PUB_B` (hex).

A few lines of Python so the benchmarks need no `wg` tool; the keys are throwaway bench keys."""
import os

P = 2**255 - 19


def x25519_base(k):
    k = bytearray(k); k[0] &= 248; k[31] &= 127; k[31] |= 64
    n = int.from_bytes(k, "little"); x1, x2, z2, x3, z3, swap = 9, 1, 0, 9, 1, 0
    for t in reversed(range(255)):
        b = (n >> t) & 1; swap ^= b
        if swap: x2, x3, z2, z3 = x3, x2, z3, z2
        swap = b
        A, B = (x2 + z2) % P, (x2 - z2) % P; AA, BB = A * A % P, B * B % P; E = (AA - BB) % P
        C, D = (x3 + z3) % P, (x3 - z3) % P; DA, CB = D * A % P, C * B % P
        x3, z3 = (DA + CB) ** 2 % P, x1 * (DA - CB) ** 2 % P
        x2, z2 = AA * BB % P, E * (AA + 121665 * E) % P
    if swap: x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


out = []
for _ in range(2):
    k = os.urandom(32); out += [k.hex(), x25519_base(k).hex()]
print(*out)
