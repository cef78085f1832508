"""The DICOM upper layer: PDU framing and reading, ACSE, DIMSE, sockets and deadlines, and the network
error hierarchy (`errors`). Imports `batchstore.dicom` only."""
