"""The front line: the lookup API, the agent page, who may call them and how fresh their data is."""
