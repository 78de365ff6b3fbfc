"""Optional training backends beside Lightning, chosen with `backend=...` (see `g16net.runner.make_job`).

`ipu`: Graphcore IPUs through PopTorch (`g16net.backends.ipu.IPURun`). Nothing is imported here, so the default
Lightning path never touches PopTorch.
"""
