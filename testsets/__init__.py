"""bakeoff.testsets"""
