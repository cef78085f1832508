"""``batchstore send``: inputs, scan, plan, the coordinator and its workers, the SCU engines, the journal,
the report and outcome classification. Never imports `batchstore.receive`."""
