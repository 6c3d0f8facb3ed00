"""The stack, with no pytest: which server a session gets, the database step, the app's services, the browser,
`dbsnap up`. This is where Settings is unpacked into the plain values the layers below take.
"""
