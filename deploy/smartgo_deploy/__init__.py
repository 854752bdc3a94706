"""The production deployment of smartgo_analytics as code (AWS CDK): `stack.py` the resources,
`access.py` what each role may do, `synth.py` the template, its checks and its deployment."""
