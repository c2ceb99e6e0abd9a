"""The node collector: job/node sampling, hook-spool forwarding, reliable delivery.

``sampler`` (job and node figures: ``cgroups`` reads the job cgroups, psutil the node), ``openfiles``
(NFS writes, fullness of the filesystems written to),
``outbox`` (on-disk unacknowledged batches), ``sender`` (DEALER side of delivery),
``watch`` (inotify on the hook spool), ``daemon`` (the loop tying them). Imports zmq,
msgpack (through wire), psutil and the standard library only; never torch.
"""
