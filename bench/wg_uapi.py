#!/usr/bin/env python3
"""Hands a configuration to wireguard-go over its UAPI socket: wg_uapi.py SOCKET CONFIG."""
import socket
import sys

s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\n")
r = s.recv(4096).decode()
sys.exit(0 if "errno=0" in r else "uapi: " + r)
