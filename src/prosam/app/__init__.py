"""``prosam app``: a local labelling page.

Annotate a reference with clicks, a box or a scribble and see SAM's mask at once; preview
the chosen method on a few targets; start the resumable ``prosam label`` job on a whole
folder and follow its progress. The page is served on 127.0.0.1 by default and reads only
files under the folder it was given (:mod:`prosam.app.paths`).
"""

from prosam.app.server import create_app, serve
from prosam.app.session import AppSession, AppSettings

__all__ = ["AppSession", "AppSettings", "create_app", "serve"]
