"""The poison manifest's format tag. The manifest itself (``clipbackdoor.attacks.manifest``) is written by the
attacks and read by evaluation, detection and cleaning; the data layer only needs to recognise one (a
poisoned CSV's manifest names the source its image paths may lead into), so the tag lives here, below both."""

MANIFEST_FORMAT = "clipbackdoor-manifest/1"
