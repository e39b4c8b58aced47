namespace Vfio.Tests;

/// <summary>Files of the repository the tests check the code against.</summary>
internal static class RepoPaths
{
    /// <summary>The folder holding Vfio.sln, above the test binary.</summary>
    public static string Root()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Vfio.sln")))
                return dir.FullName;
        throw new InvalidOperationException("Vfio.sln not found above " + AppContext.BaseDirectory);
    }
}
