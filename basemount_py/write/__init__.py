"""Write mode (BaseMount §5): new projects and app results, uploads, trash, properties.

``manager.WriteManager`` is what the FUSE adapter calls. Every file and property written lands in
the local ``spool`` first (durable at close); the ``uploader`` sends it in the background with
retries (small or multipart); ``properties`` handles property links; ``api.WriteApi`` holds the
REST calls. Like ``tree/`` and ``read/``, nothing here imports pyfuse3: failures are
``WriteFailure`` (an ``OSError`` with the errno for the writer and a one-line message).
"""

from .manager import WriteManager
from .spool import Spool, account_key
from .upload import UploadConfig, WriteFailure

__all__ = ["WriteManager", "Spool", "account_key", "UploadConfig", "WriteFailure"]
