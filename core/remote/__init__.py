"""Remote hosts over SSH (client side): known_hosts checking, the paramiko connection and authentication, the
agent protocol client and RemoteHost, the Host API for a machine running the Vireo agent. Not shipped to remote
hosts (core/agent/version.py leaves this package out of the engine bundle)."""
