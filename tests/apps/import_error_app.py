"""An app that fails to import, as after a typo in a deploy: `jobrunner run` must exit 3."""

import jobrunner

registry = jobrunner.Registry()
raise ImportError("cannot import name 'Mailer' from 'app.mail' (broken on purpose)")
