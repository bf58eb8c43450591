"""The stream service: readings fanned out to dashboards as Server-Sent Events, resumable by stream sequence."""
