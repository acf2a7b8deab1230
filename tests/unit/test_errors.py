

def test_machine_faults_are_told_apart_from_bugs_through_the_chain_and_by_message() -> None:
    import errno

    from imgflow.runtime.errors import machine_fault

    disk = OSError(errno.ENOSPC, "No space left on device", "/data/artifacts/clean/x/records.parquet")
    assert "at /data/artifacts/clean/x/records.parquet: the disk is full (ENOSPC" in machine_fault(disk)
    try:
        try:
            raise OSError("Error writing bytes to file. Detail: [errno 30] Read-only file system")  # pyarrow: no errno
        except OSError as inner:
            raise RuntimeError("the stage failed") from inner
    except RuntimeError as outer:
        found = machine_fault(outer, "/mnt/ro")
    assert found is not None and "under /mnt/ro: the file system is read-only (EROFS" in found
    assert machine_fault(ValueError("a bug")) is None
    assert machine_fault(OSError(errno.ENOENT, "No such file or directory", "x")) is None  # a missing input is not the machine
