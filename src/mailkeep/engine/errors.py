"""ESE error numbers and the one exception the engine raises.

Invariant: every failure the engine reports carries the ESE number and name an Exchange
administrator would look up (``-1018 JET_errReadVerifyFailure``), the file concerned, and
what to do next. Numbers are persisted values (jethdr.w); never renumber them.
"""

from __future__ import annotations

# number -> (name, short engine description)
ERRORS: dict[int, tuple[str, str]] = {
    -107: ("JET_errInternalError", "Fatal internal error"),
    -500: ("JET_errInvalidLoggedOperation", "Logged operation cannot be redone"),
    -501: ("JET_errLogFileCorrupt", "Log file is corrupt"),
    -505: ("JET_errBackupInProgress", "Backup is active already"),
    -506: ("JET_errRestoreInProgress", "Restore in progress"),
    -509: ("JET_errMissingPreviousLogFile", "Missing the log file for check point"),
    -510: ("JET_errLogWriteFail", "Failure writing to log file"),
    -513: ("JET_errLogGenerationMismatch", "Name of logfile does not match internal generation number"),
    -514: ("JET_errBadLogVersion", "Version of log file is not compatible with Jet version"),
    -515: ("JET_errInvalidLogSequence", "Timestamp in next log does not match expected"),
    -516: ("JET_errLoggingDisabled", "Log is not active"),
    -519: ("JET_errLogSequenceEnd", "Maximum log file number exceeded"),
    -520: ("JET_errNoBackup", "No backup in progress"),
    -521: ("JET_errInvalidBackupSequence", "Backup call out of sequence"),
    -523: ("JET_errBackupNotAllowedYet", "Cannot do backup now"),
    -526: ("JET_errInvalidBackup", "Cannot perform incremental backup when circular logging enabled"),
    -527: ("JET_errRecoveredWithErrors", "Restored with errors"),
    -528: ("JET_errMissingLogFile", "Current log file missing"),
    -529: ("JET_errLogDiskFull", "Log disk full"),
    -530: ("JET_errBadLogSignature", "Bad signature for a log file"),
    -531: ("JET_errBadDbSignature", "Bad signature for a db file"),
    -532: ("JET_errBadCheckpointSignature", "Bad signature for a checkpoint file"),
    -533: ("JET_errCheckpointCorrupt", "Checkpoint file not found or corrupt"),
    -536: ("JET_errRedoAbruptEnded", "Redo abruptly ended due to sudden failure in reading logs"),
    -539: ("JET_errDatabaseLogSetMismatch", "Database does not belong with the current set of log files"),
    -540: ("JET_errDatabaseStreamingFileMismatch", "Database and streaming file do not match each other"),
    -541: ("JET_errLogFileSizeMismatch", "actual log file size does not match configured size"),
    -542: ("JET_errCheckpointFileNotFound", "Could not locate checkpoint file"),
    -543: ("JET_errRequiredLogFilesMissing", "The required log files for recovery is missing."),
    -544: ("JET_errSoftRecoveryOnBackupDatabase", "Soft recovery is intended on a backup database. Restore should be used instead"),
    -548: ("JET_errLogSequenceEndDatabasesConsistent", "databases have been recovered, but the log file sequence is exhausted"),
    -549: ("JET_errStreamingDataNotLogged", "Illegal attempt to replay a streaming file operation where the data wasn't logged"),
    -550: ("JET_errDatabaseDirtyShutdown", "Database was not shutdown cleanly. Recovery must first be run to properly complete database operations for the previous shutdown."),
    -551: ("JET_errConsistentTimeMismatch", "Database last consistent time unmatched"),
    -553: ("JET_errEndingRestoreLogTooLow", "The starting log number too low for the restore"),
    -554: ("JET_errStartingRestoreLogTooHigh", "The starting log number too high for the restore"),
    -555: ("JET_errGivenLogFileHasBadSignature", "Restore log file has bad signature"),
    -556: ("JET_errGivenLogFileIsNotContiguous", "Restore log file is not contiguous"),
    -557: ("JET_errMissingRestoreLogFiles", "Some restore log files are missing"),
    -560: ("JET_errMissingFullBackup", "The database missed a previous full backup before incremental backup"),
    -565: ("JET_errMissingCurrentLogFiles", "Some current log files are missing for continuous restore"),
    -566: ("JET_errDbTimeTooOld", "dbtime on page smaller than dbtimeBefore in record"),
    -567: ("JET_errDbTimeTooNew", "dbtime on page in advance of the dbtimeBefore in record"),
    -569: ("JET_errMissingFileToBackup", "Some log or patch files are missing during backup"),
    -610: ("JET_errExistingLogFileHasBadSignature", "Existing log file has bad signature"),
    -611: ("JET_errExistingLogFileIsNotContiguous", "Existing log file is not contiguous"),
    -612: ("JET_errLogReadVerifyFailure", "Checksum error in log file during backup"),
    -614: ("JET_errCheckpointDepthTooDeep", "too many outstanding generations between checkpoint and current generation"),
    -615: ("JET_errRestoreOfNonBackupDatabase", "hard recovery attempted on a database that wasn't a backup database"),
    -801: ("JET_errBackupAbortByServer", "Backup was aborted by server by calling JetTerm with JET_bitTermStopBackup"),
    -1018: ("JET_errReadVerifyFailure", "Checksum error on a database page"),
    -1019: ("JET_errPageNotInitialized", "Blank database page"),
    -1022: ("JET_errDiskIO", "Disk IO error"),
    -1032: ("JET_errFileAccessDenied", "Cannot access file, the file is locked or in use"),
    -1202: ("JET_errDatabaseInUse", "Database in use"),
    -1203: ("JET_errDatabaseNotFound", "No such database"),
    -1206: ("JET_errDatabaseCorrupted", "Non database file or corrupted db"),
    -1216: ("JET_errAttachedDatabaseMismatch", "An outstanding database attachment has been detected at the start or end of recovery, but database is missing or does not match attachment info"),
    -1222: ("JET_errDatabaseSignInUse", "Database with same signature in use"),
    -1808: ("JET_errDiskFull", "No space left on disk"),
    -1811: ("JET_errFileNotFound", "File not found"),
    -1852: ("JET_errLogCorrupted", "Logs could not be interpreted"),
    -2204: ("JET_errSLVStreamingFileMissing", "The streaming file is missing"),
}

InternalError = -107
LogFileCorrupt = -501
BackupInProgress = -505
MissingPreviousLogFile = -509
LogWriteFail = -510
LogGenerationMismatch = -513
BadLogVersion = -514
InvalidLogSequence = -515
LoggingDisabled = -516
LogSequenceEnd = -519
NoBackup = -520
InvalidBackupSequence = -521
InvalidBackup = -526
MissingLogFile = -528
LogDiskFull = -529
BadLogSignature = -530
BadDbSignature = -531
BadCheckpointSignature = -532
CheckpointCorrupt = -533
DatabaseLogSetMismatch = -539
DatabaseStreamingFileMismatch = -540
LogFileSizeMismatch = -541
CheckpointFileNotFound = -542
RequiredLogFilesMissing = -543
SoftRecoveryOnBackupDatabase = -544
DatabaseDirtyShutdown = -550
MissingFullBackup = -560
DbTimeTooNew = -567
MissingFileToBackup = -569
LogReadVerifyFailure = -612
CheckpointDepthTooDeep = -614
BackupAbortByServer = -801
ReadVerifyFailure = -1018
DiskIO = -1022
FileAccessDenied = -1032
DatabaseInUse = -1202
DatabaseNotFound = -1203
DatabaseCorrupted = -1206
AttachedDatabaseMismatch = -1216
DatabaseSignInUse = -1222
DiskFull = -1808
FileNotFound = -1811
SLVStreamingFileMissing = -2204


def error_name(number: int) -> str:
    return ERRORS.get(number, ("JET_errUnknown", ""))[0]


class EseError(Exception):
    """An engine failure: ESE number, name, and a message naming the file and the remedy."""

    def __init__(self, number: int, message: str, *, path: str | None = None) -> None:
        self.number = number
        self.name = error_name(number)
        self.path = path
        self.detail = message
        super().__init__(f"{number} ({self.name}): {message}")

    @property
    def description(self) -> str:
        return ERRORS.get(self.number, ("", "unknown error"))[1]

    @property
    def hex(self) -> str:
        return f"0x{self.number & 0xFFFFFFFF:08x}"
