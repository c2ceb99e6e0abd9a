"""The node collector: job/node sampling, hook-spool forwarding, reliable delivery.

``sampler`` (job cgroups + psutil), ``nfs`` (NFS write estimate), ``outbox`` (on-disk
unacknowledged batches), ``sender`` (DEALER loop), ``daemon`` (the loop tying them).
Imports psutil, zmq and msgpack only; never torch.
"""
