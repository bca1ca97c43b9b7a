"""forward3d.data"""
