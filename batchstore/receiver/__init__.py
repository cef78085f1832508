"""``batchstore receive``: options, the server and its process model, one association's loop, the store
policy, file naming, atomic files, host access and events. Never imports `batchstore.send`."""
