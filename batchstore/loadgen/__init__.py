"""``batchstore load``: a load generator for Storage SCPs.

`templates` prepares each input data set once, in the accepted transfer syntax, with fixed-length slots
for the UIDs that change per C-STORE; `worker` drives one association per process (closed loop, or open
loop at a fixed rate with latency measured from each request's scheduled time); `run` sweeps the
concurrency levels; `figures` holds the results (HDR histograms) and prints them; `html` draws the
report page.

The package is not called ``load``: `batchstore.load` is the public API function (`batchstore.api.load`),
and a subpackage of that name would shadow it.
"""
