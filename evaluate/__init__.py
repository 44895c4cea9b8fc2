"""bakeoff.evaluate"""
