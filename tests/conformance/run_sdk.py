"""Drive Illumina's official v1pre3 Python SDK (basespace-python-sdk) against an emulator.

Not part of the test suite: the SDK is not in this repository (its code is never committed
here) and is Python 2 code.  To run it (Python <= 3.12, which still has ``2to3``, and
``python-dateutil``)::

    git clone https://github.com/basespace/basespace-python-sdk /tmp/bs-sdk
    2to3 -w -n /tmp/bs-sdk/src/BaseSpacePy
    .venv/bin/basemount-py serve --data ACCOUNT_DIR --port 8765 &      # e.g. a demo account
    BASESPACE_TOKEN=demo-token python3 tests/conformance/run_sdk.py /tmp/bs-sdk/src http://127.0.0.1:8765/

It walks the account the way the SDK's examples do (user, projects, samples, app results,
app sessions, runs, their files and properties, signed file URLs) and prints every call that
raised.  The one shim besides 2to3: Python 3's ``subprocess.run``, which the SDK's
``from subprocess import *`` would otherwise let shadow its ``Run`` model.
"""

from __future__ import annotations

import os
import sys
import traceback


def main(sdk_src: str, url: str) -> int:
    sys.path.insert(0, sdk_src)
    import BaseSpacePy.api.APIClient as client  # type: ignore[import-not-found]
    from BaseSpacePy.api.BaseSpaceAPI import BaseSpaceAPI  # type: ignore[import-not-found]
    from BaseSpacePy.model.QueryParameters import QueryParameters  # type: ignore[import-not-found]

    client.__dict__.pop("run", None)  # the shim (see above)
    api = BaseSpaceAPI("k", "s", url, "v1pre3", AccessToken=os.environ["BASESPACE_TOKEN"])
    every = QueryParameters({"Limit": 1024})
    calls, failures = 0, []

    def call(name, fn, *args):
        nonlocal calls
        calls += 1
        try:
            return fn(*args)
        except Exception as exc:  # every SDK failure is reported, none stops the walk
            failures.append(f"{name}: {exc!r}\n{traceback.format_exc(limit=-2)}")
            return None

    call("getUserById", api.getUserById, "current")
    for p in call("getProjectByUser", api.getProjectByUser, every) or []:
        call("getProjectById", api.getProjectById, p.Id)
        call("getProjectPropertiesById", api.getProjectPropertiesById, p.Id)
        for s in (call("getSamplesByProject", api.getSamplesByProject, p.Id, every) or [])[:3]:
            call("getSampleById", api.getSampleById, s.Id)
            call("getSamplePropertiesById", api.getSamplePropertiesById, s.Id)
            call("getFilesBySample", api.getFilesBySample, s.Id)
            for f in (call("getSampleFilesById", api.getSampleFilesById, s.Id) or [])[:1]:
                call("getFileById", api.getFileById, f.Id)
                call("getFilePropertiesById", api.getFilePropertiesById, f.Id)
                call("fileUrl", api.fileUrl, f.Id)
        for a in (call("getAppResultsByProject", api.getAppResultsByProject, p.Id, every) or [])[:3]:
            result = call("getAppResultById", api.getAppResultById, a.Id)
            call("getAppResultPropertiesById", api.getAppResultPropertiesById, a.Id)
            call("getAppResultFilesById", api.getAppResultFilesById, a.Id)
            call("getAppResultFiles", api.getAppResultFiles, a.Id)
            session = getattr(result, "AppSession", None)
            if session is not None:
                call("getAppSessionById", api.getAppSessionById, session.Id)
                call("getAppSession", api.getAppSession, session.Id)
                call("getAppSessionPropertiesById", api.getAppSessionPropertiesById, session.Id)
                call("getAppSessionInputsById", api.getAppSessionInputsById, session.Id)
    for r in call("getAccessibleRunsByUser", api.getAccessibleRunsByUser, every) or []:
        call("getRunById", api.getRunById, r.Id)
        call("getRunPropertiesById", api.getRunPropertiesById, r.Id)
        call("getRunFilesById", api.getRunFilesById, r.Id, QueryParameters({"Limit": 1000}))
        call("getRunSamplesById", api.getRunSamplesById, r.Id)
    print(f"{calls} SDK calls, {len(failures)} failed")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: run_sdk.py SDK_SRC_DIR EMULATOR_URL  (token in $BASESPACE_TOKEN)")
    sys.exit(main(sys.argv[1], sys.argv[2]))
