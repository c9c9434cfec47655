"""proxy: the credential-injecting proxy daemon and ``valetkey run``. An agent's requests go
through a local proxy that adds the real credential for the hosts a grant is bound to; the agent
only ever holds a placeholder.

Only hook implementations live here; everything else is imported when first used.
"""

from __future__ import annotations
