"""Write mode (BaseMount §5): new projects and app results, uploads, trash, properties.

``manager.WriteManager`` is what the FUSE adapter calls; ``upload.Upload`` streams one file to
BaseSpace (small or multipart); ``properties`` handles ``Properties/`` writes; ``api.WriteApi``
holds the REST calls. Like ``tree/`` and ``read/``, nothing here imports pyfuse3: failures are
``WriteFailure`` (an ``OSError`` with the errno for the writer and a one-line message).
"""

from .manager import WriteManager
from .upload import Upload, UploadConfig, WriteFailure

__all__ = ["WriteManager", "Upload", "UploadConfig", "WriteFailure"]
