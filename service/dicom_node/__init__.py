"""The DICOM node (``dqe dicom-node``): a C-ECHO / C-STORE SCP beside a PACS that spools instances to disk on
arrival, scores each study once it has been quiet, and sends the SR (and KOS) back with C-STORE (issue 19)."""
