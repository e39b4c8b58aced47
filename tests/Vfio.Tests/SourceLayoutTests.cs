namespace Vfio.Tests;

/// <summary>What .editorconfig states and the compiler does not check.</summary>
public class SourceLayoutTests
{
    private const int MaxLineLength = 150;
    private static readonly string[] SourceFolders = ["src", "tests", "hwtests"];

    [Fact]
    public void No_source_line_is_longer_than_the_limit()
    {
        var root = RepoPaths.Root();
        var tooLong = SourceFolders
            .SelectMany(dir => Directory.EnumerateFiles(Path.Combine(root, dir), "*.cs", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .SelectMany(f => File.ReadLines(f).Select((line, i) => (File: Path.GetRelativePath(root, f), Line: i + 1, line.Length)))
            .Where(x => x.Length > MaxLineLength)
            .Select(x => $"{x.File}:{x.Line} ({x.Length} characters)")
            .ToList();
        Assert.True(tooLong.Count == 0, $"lines over {MaxLineLength} characters:\n" + string.Join("\n", tooLong));
    }
}
