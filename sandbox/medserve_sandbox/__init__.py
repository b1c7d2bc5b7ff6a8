"""The sandbox: the whole medserve system on loopback, for the demo and the integration tests.

It holds a Kubernetes API emulator, the launchers of MLflow and the operator, and the demo driver.
Nothing here is used by the operator in a real cluster.
"""
