"""The DICOM leaf: UIDs and the transfer-syntax table, Part 10 reading and writing, data set conversion.

Both halves of batchstore use it; it imports nothing else of batchstore.
"""
